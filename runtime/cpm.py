"""CPM's tokenizer without torch or transformers: jieba segmentation (jieba-rs, through `rjieba`) + sentencepiece.

The algorithm is transformers' `CpmTokenizer` as documented (transformers 4.x; 5.x's `_tokenize` skips the jieba
and ▂/▃ steps, so its ids lose every space): split the text at the added tokens (<eod>...), then per stretch of
text: segment it with `rjieba.cut(text, hmm=False)`, map spaces and newlines inside the words to ▂ and ▃, join the
words with spaces, normalise as XLNet does (collapse whitespace, NFKD without accents) and encode with sentencepiece
(XLNet's split of a piece ending in a digit and a comma never applies: jieba has cut punctuation from digits).
Decoding drops sentencepiece's word marks and the joining spaces, then maps ▂ and ▃ back to a space and a newline.

The bundle carries `spiece.model` (manifest `files.sentencepiece`) and a `tokenizer` block ({"type": "cpm",
"added_tokens": {token: id}, "do_lower_case", "remove_space", "keep_accents"}).
`sentencepiece` and `rjieba` are imported only when such a bundle is opened (`pip install 'edgeinfer[cpm]'`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .bundle import first_line, inside
from .errors import BundleError, InputError

WORD_MARK = "\u2581"  # sentencepiece's ▁
SPACE, NEWLINE = "\u2582", "\u2583"  # ▂ ▃
TRANSLATE = str.maketrans(" \n", SPACE + NEWLINE)


@dataclass(frozen=True)
class Encoding:
    """What `encode` returns: the ids and their sentencepiece pieces (the `tokenizers` Encoding fields the runtime reads)."""

    ids: list[int]
    tokens: list[str]


class CpmTokenizer:
    """CPM text <-> ids with the interface of a `tokenizers.Tokenizer` that the runtime uses (encode, encode_batch,
    decode, token_to_id, id_to_token, get_vocab, get_vocab_size)."""

    def __init__(self, model_file: str | Path, added_tokens: dict[str, int], *, do_lower_case: bool = False,
                 remove_space: bool = True, keep_accents: bool = False) -> None:
        try:
            import rjieba
            import sentencepiece
        except ImportError as exc:
            raise BundleError(f"a CPM tokenizer needs sentencepiece and rjieba (pip install 'edgeinfer[cpm]'): {exc}") from exc
        self.jieba = rjieba
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(model_file))
        except (OSError, RuntimeError) as exc:
            raise BundleError(f"sentencepiece model {model_file} cannot be read: {first_line(exc)}") from exc
        self.added = dict(added_tokens)
        self.added_ids = {i: token for token, i in self.added.items()}
        self.do_lower_case, self.remove_space, self.keep_accents = do_lower_case, remove_space, keep_accents
        longest_first = sorted(self.added, key=len, reverse=True)
        self.split = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if longest_first else None

    # ------------------------------------------------------------ encoding
    def _normalise(self, text: str) -> str:
        if self.remove_space:
            text = " ".join(text.strip().split())
        text = text.replace("``", '"').replace("''", '"')
        if not self.keep_accents:
            text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
        return text.lower() if self.do_lower_case else text

    def _pieces(self, text: str) -> list[str]:
        """One stretch of text without added tokens -> sentencepiece pieces."""
        text = self._normalise(" ".join(word.translate(TRANSLATE) for word in self.jieba.cut(text, False)))
        return self.sp.encode(text, out_type=str)

    def tokenize(self, text: str) -> list[str]:
        """Pieces and added tokens (split out first, as transformers does; odd places of the split hold them)."""
        parts = self.split.split(text) if self.split else [text]
        return [token for i, part in enumerate(parts) if part
                for token in ([part] if i % 2 else self._pieces(part))]

    def encode(self, text: str, add_special_tokens: bool = False) -> Encoding:
        """The ids of `text` (CPM's bundles are decoders: no special tokens are added either way)."""
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        tokens = self.tokenize(text)
        return Encoding([self.token_to_id(t) for t in tokens], tokens)

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[Encoding]:
        return [self.encode(text) for text in texts]

    # ------------------------------------------------------------ decoding
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids`: pieces joined without word marks or spaces, ▂ and ▃ back to a space and a newline;
        added tokens (<unk>, <eod>...) are left out unless skip_special_tokens is False."""
        tokens = [self.id_to_token(int(i)) for i in ids if not (skip_special_tokens and int(i) in self.added_ids)]
        text = "".join(tokens).replace(WORD_MARK, "").replace(" ", "")
        return text.replace(SPACE, " ").replace(NEWLINE, "\n")

    # ------------------------------------------------------------ vocabulary
    def token_to_id(self, token: str) -> int:
        return self.added[token] if token in self.added else self.sp.PieceToId(token)

    def id_to_token(self, i: int) -> str:
        return self.added_ids[i] if i in self.added_ids else self.sp.IdToPiece(i)

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        vocab = {self.sp.IdToPiece(i): i for i in range(self.sp.GetPieceSize())}
        return vocab | self.added if with_added_tokens else vocab

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return len(self.get_vocab(with_added_tokens))


def open_cpm_tokenizer(folder: Path, manifest: dict, vocab_size: int | None = None) -> CpmTokenizer:
    """The tokenizer of a bundle whose manifest `tokenizer` block says "type": "cpm"; every id below vocab_size."""
    block = manifest["tokenizer"]
    added = block.get("added_tokens", {})
    if not isinstance(added, dict) or not all(isinstance(t, str) and isinstance(i, int) and not isinstance(i, bool)
                                              and i >= 0 for t, i in added.items()):
        raise BundleError("manifest field 'tokenizer.added_tokens' must map token strings to ids >= 0")
    options = {name: block.get(name, default) for name, default in
               (("do_lower_case", False), ("remove_space", True), ("keep_accents", False))}
    if not all(isinstance(value, bool) for value in options.values()):
        raise BundleError(f"manifest fields tokenizer.{', '.join(options)} must be true or false, got {options}")
    path = inside(folder, "sentencepiece", manifest["files"].get("sentencepiece"))
    tokenizer = CpmTokenizer(path, added, **options)
    largest = max(tokenizer.get_vocab().values(), default=-1)
    if vocab_size is not None and largest >= vocab_size:
        raise BundleError(f"bundle {folder}: the CPM tokenizer has token id {largest}, beyond the model's vocabulary "
                          f"(manifest model.vocab_size {vocab_size})")
    return tokenizer
