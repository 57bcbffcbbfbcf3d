"""WordPiece tokenizer of the dialogue model, trained on the dialogue corpus itself.

A vocabulary sized for the data (about 8k pieces) keeps the embedding small, so a model of a given size spends its
parameters on layers: BERT-Chinese's 21,128 tokens made 77% of a 3.5M-parameter chat model an embedding mostly of
tokens the corpus never uses. The pipeline is BERT's (lowercase, strip accents, one piece per CJK character, split
at punctuation), so the runtime's `tidy` undoes the decoder's spacing the same way for any vocabulary. The special
tokens come first, `[PAD] [UNK] [CLS] [SEP] [MASK]` = ids 0-4. No post-processor is attached: `[CLS]`/`[SEP]`
are placed by `edgeinfer.chat.format`, which knows the dialogue layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)

UNK_TOKEN = "[UNK]"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCAB_SIZE = 8000
MAX_ALPHABET = 4000  # characters kept as pieces: every CJK character of the corpus fits, rare symbols become [UNK]


def empty_tokenizer() -> Tokenizer:
    """The untrained pipeline: BERT normalizer and pre-tokenizer, WordPiece model and decoder."""
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK_TOKEN, max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A WordPiece vocabulary of at most `vocab_size` pieces learned from `texts`.

    The trainer breaks ties between equally frequent merges in hash order, so two runs may differ in a few rare
    pieces: the data step writes the tokenizer once and training and the bundle use that file.
    """
    tokenizer = empty_tokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS), limit_alphabet=MAX_ALPHABET,
        continuing_subword_prefix="##", show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # registered as special so they are never split and decode(skip_special_tokens=True) drops them
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):
        raise ValueError(f"special tokens got ids {ids}, expected 0-{len(SPECIAL_TOKENS) - 1}")
    return tokenizer


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    """The manifest's special_tokens block for a tokenizer of this pipeline."""
    ids = {name: tokenizer.token_to_id(token) for name, token in
           (("pad", "[PAD]"), ("unk", "[UNK]"), ("cls", "[CLS]"), ("sep", "[SEP]"))}
    return {**ids, "eos": ids["sep"]}


def load_tokenizer(path: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))
