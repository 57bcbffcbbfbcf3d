"""DGCNN reader backend: characters are the units; jieba words give each character a word id too.

The graph takes (q_chars, q_words, p_chars, p_words) with 0 as padding and returns start/end pointer
probabilities per passage character, so span scores are products.

Segmentation is jieba's (`jieba.lcut`, HMM on), computed by jieba-rs through `rjieba`, imported on first use: it
opens in about 0.1 s where jieba reads its 350,000-word dictionary in 0.5 s (1.6 s without its cache file), and
installs 5 MB where jieba takes 42 MB. The two agree on every CJK character; they differ only in how a run of
ASCII letters, digits and punctuation outside the dictionary splits, which `jieba_words` puts back as jieba does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..bundle import read_json_file
from ..errors import BundleError
from .units import Encoded, Window, pad_rows

PAD, UNK = 0, 1


def encode(words: Sequence[str], chars_vocab: dict[str, int], words_vocab: dict[str, int]) -> tuple[list[int], list[int]]:
    """Char ids and per-char word ids for a segmented text (e.g. ``jieba.lcut(text)``)."""
    char_ids = [chars_vocab.get(c, UNK) for w in words for c in w]
    word_ids = [i for w in words for i in [words_vocab.get(w, UNK)] * len(w)]
    return char_ids, word_ids


def _table(vocab, key: str, size) -> dict[str, int]:
    """vocab.json's `key` table (unit -> id), every id inside the model's embedding of `size` rows."""
    field = f"model.{key[:-1]}_vocab"
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise BundleError(f"manifest field '{field}' must be an integer >= 2 (padding and unknown), got {size!r}")
    table = vocab.get(key) if isinstance(vocab, dict) else None
    if not isinstance(table, dict):
        raise BundleError(f"vocab file has no '{key}' table (an object of unit -> id)")
    bad = next((u for u, i in table.items() if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < size), None)
    if bad is not None:
        raise BundleError(f"vocab file's '{key}' gives {bad!r} the id {table[bad]!r}, outside [0, {size}) "
                          f"({field})")
    return table


# jieba's finalseg cuts an out-of-dictionary non-CJK run into these pieces and single characters; jieba-rs keeps it
ALNUM_RUN = re.compile(r"([a-zA-Z0-9]+(?:\.\d+)?%?)")
CJK = re.compile("[\u4e00-\u9fd5]")
# the only multi-character words of jieba's dictionary with neither a CJK character nor alphanumerics alone
ASCII_DICTIONARY_WORDS = frozenset({"AT&T", "c#", "C#", "c++", "C++"})


def jieba_words(word: str) -> list[str]:
    """A jieba-rs word as jieba cuts it: a non-CJK word outside the dictionary splits into alphanumeric runs
    (a decimal and a percent sign stay attached) and single other characters."""
    if len(word) == 1 or word.isalnum() or word in ASCII_DICTIONARY_WORDS or CJK.search(word):
        return [word]
    return [piece for piece in ALNUM_RUN.split(word) if piece]


def _segmenter() -> Callable[[str], list[str]]:
    """`text -> words`, the words of ``jieba.lcut(text)``."""
    try:
        import rjieba
    except ImportError as exc:
        raise BundleError(f"the DGCNN reader segments text with rjieba (pip install rjieba): {exc}") from exc

    def lcut(text: str) -> list[str]:
        return [piece for word in rjieba.cut(text, True) for piece in jieba_words(word)]

    return lcut


class DGCNNFeatures:
    """Text -> char/word ids with the bundle's vocab.json, and model outputs -> start/end scores."""

    combine = "product"

    def __init__(self, folder: Path, manifest: dict) -> None:
        vocab = read_json_file(folder, manifest, "vocab")
        sizes = manifest.get("model", {})
        self.chars = _table(vocab, "chars", sizes.get("char_vocab"))
        self.words = _table(vocab, "words", sizes.get("word_vocab"))
        self.sizes = sizes["char_vocab"], sizes["word_vocab"]
        self.max_question_len = manifest["qa"]["max_question_len"]
        self._lcut = None

    def _encode(self, text: str) -> Encoded:
        if self._lcut is None:
            self._lcut = _segmenter()
        words = self._lcut(text)
        if "".join(words) != text:  # never seen, but offsets must stay exact: fall back to single characters
            words = list(text)
        chars, word_ids = encode(words, self.chars, self.words)
        offsets = np.stack([np.arange(len(text)), np.arange(1, len(text) + 1)], axis=1)
        return Encoded(np.array([chars, word_ids], dtype=np.int64).T, offsets)

    def question(self, text: str) -> Encoded:
        """The question's first max_question_len characters (the reader was trained on no longer ones)."""
        return self._encode(text[: self.max_question_len])

    def passage(self, text: str) -> Encoded:
        return self._encode(text)

    def window_size(self, question: Encoded, window: int) -> int:
        return window

    def feeds(self, rows: list[Window]) -> dict[str, np.ndarray]:
        q = [row.q.ids for row in rows]
        p = [row.p.ids[row.start : row.end] for row in rows]
        return {
            "q_chars": pad_rows([ids[:, 0] for ids in q]),
            "q_words": pad_rows([ids[:, 1] for ids in q]),
            "p_chars": pad_rows([ids[:, 0] for ids in p]),
            "p_words": pad_rows([ids[:, 1] for ids in p]),
        }

    def probe_feeds(self, window: int) -> dict[str, np.ndarray]:
        """The largest inputs the manifest promises: a full question and window of the last char and word ids."""
        q = np.tile(np.array(self.sizes, dtype=np.int64) - 1, (self.max_question_len, 1))
        p = np.tile(np.array(self.sizes, dtype=np.int64) - 1, (window, 1))
        return {"q_chars": q[None, :, 0], "q_words": q[None, :, 1], "p_chars": p[None, :, 0], "p_words": p[None, :, 1]}

    def scores(self, outputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray], rows: list[Window]):
        """(start, end, valid) over each row's window units."""
        return outputs["start_probs"], outputs["end_probs"], feeds["p_chars"] != PAD
