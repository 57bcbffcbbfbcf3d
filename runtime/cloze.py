"""Cloze classification inputs: a pattern with a mask slot, label words, and the token rows a masked LM reads.

A pattern is text with one slot `___` and, optionally, `{text}` where the input text goes; without `{text}` the
pattern follows the text ("{text}___满意。" and "___满意。" are the same pattern, "评价：___。{text}" puts it first).
A label word of k tokens fills the slot with k masks. Fragments (the text, each literal piece of the pattern, each
label word) are tokenized separately, so a word never merges with its neighbours; a text too long for the model
loses its end, never the pattern. Torch-free: `edgeinfer.mlm.MaskedLM.cloze` scores these rows, and the training
side (`edgeinfer.export.pet`) trains on the same rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .errors import InputError

SLOT = "___"
TEXT = "{text}"
SCORINGS = ("product", "conditional")

Encode = Callable[[str], list[int]]


@dataclass(frozen=True)
class Cloze:
    """One text's classification: the best label, every label's probability (normalised over the labels; a label
    with several words sums theirs) and every label word's log-probability of filling the slot."""

    label: str
    scores: dict[str, float]
    words: dict[str, float]

    def to_dict(self) -> dict:
        return {"label": self.label, "scores": self.scores, "words": self.words}


class Template:
    """A parsed pattern: literal token ids around the text and the slot, in order."""

    def __init__(self, pattern: str, encode: Encode) -> None:
        if not isinstance(pattern, str):
            raise InputError(f"a pattern must be a str, got {type(pattern).__name__}")
        if pattern.count(SLOT) != 1:
            raise InputError(f"a pattern needs exactly one mask slot {SLOT!r}, got {pattern.count(SLOT)} in {pattern!r}")
        if pattern.count(TEXT) > 1:
            raise InputError(f"a pattern takes {TEXT!r} at most once, got {pattern!r}")
        if TEXT not in pattern:
            pattern = TEXT + pattern
        self.pattern = pattern
        self.parts: list[list[int] | str] = []  # literal token ids, or "text" / "slot"
        for piece in re.split(f"({re.escape(SLOT)}|{re.escape(TEXT)})", pattern):
            if piece in (SLOT, TEXT):
                self.parts.append("slot" if piece == SLOT else "text")
            elif piece:
                self.parts.append(encode(piece))
        self.fixed = sum(len(p) for p in self.parts if isinstance(p, list))

    def row(self, text: list[int], n_masks: int, mask: int, cls: int, sep: int, max_length: int) -> tuple[list[int], int]:
        """([CLS] pattern-with-text [SEP] ids with n_masks masks in the slot, the slot's first position). The text is
        cut to fit `max_length`."""
        room = max_length - self.fixed - n_masks - 2
        if room < 1:
            raise InputError(f"the pattern {self.pattern!r} with a {n_masks}-token label word leaves no room for text "
                             f"in the model's {max_length} positions")
        ids, slot = [cls], -1
        for part in self.parts:
            if part == "slot":
                slot = len(ids)
                ids += [mask] * n_masks
            elif part == "text":
                ids += text[:room]
            else:
                ids += part
        return [*ids, sep], slot


def label_words(labels: Mapping[str, str], encode: Encode, unk: int | None) -> dict[str, list[int]]:
    """Label word -> its token ids, checked: at least two labels, every word known to the vocabulary."""
    if not isinstance(labels, Mapping) or not labels:
        raise InputError("labels must be a non-empty mapping of label word -> label name")
    bad = [(w, n) for w, n in labels.items() if not isinstance(w, str) or not w.strip() or not isinstance(n, str) or not n]
    if bad:
        raise InputError(f"each label word and label name must be a non-empty str, got {bad[0]!r}")
    if len(set(labels.values())) < 2:
        raise InputError(f"cloze classification needs at least two label names, got {sorted(set(labels.values()))}")
    words = {}
    for word in labels:
        ids = encode(word)
        if not ids or (unk is not None and unk in ids):
            raise InputError(f"label word {word!r} is not in the model's vocabulary (it tokenizes to {ids})")
        words[word] = ids
    return words


def check_scoring(scoring: str) -> str:
    if scoring not in SCORINGS:
        raise InputError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    return scoring
