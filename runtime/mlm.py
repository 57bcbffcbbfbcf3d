"""`MaskedLM`: a masked-language-model bundle (task `masked-lm`, exported from `BertForMaskedLM`).

A text is read as [CLS] text [SEP] with the bundle's tokenizer (a "[MASK]" in it is the mask token); `logits` gives
every position's vocabulary logits, which a cloze classifier reads at its mask, and `fill` the top-k tokens at each
mask with their probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundle import first_line, load_tokenizer
from .errors import BundleError, InputError
from .session import open_session


@dataclass(frozen=True)
class Filled:
    """A candidate for one mask: the token, its id, and its probability there (softmax over the vocabulary)."""

    token: str
    id: int
    score: float


def _count(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleError(f"manifest field '{field}' must be an integer >= 1, got {value!r}")
    return value


class MaskedLM:
    """A masked-LM bundle opened on an onnxruntime session."""

    def __init__(self, folder: Path, manifest: dict, device: str = "auto", threads: int | None = None) -> None:
        self.folder, self.manifest = folder, manifest
        sizes = manifest.get("model")
        if not isinstance(sizes, dict):
            raise BundleError("manifest field 'model' must be an object")
        self.vocab_size = _count(sizes.get("vocab_size"), "model.vocab_size")
        self.max_length = _count(sizes.get("max_positions"), "model.max_positions")
        self.tokenizer = load_tokenizer(folder, manifest, self.vocab_size)
        special = manifest["special_tokens"]
        missing = [t for t in ("cls", "sep", "pad", "mask") if isinstance(special.get(t), bool)
                   or not isinstance(special.get(t), int) or not 0 <= special[t] < self.vocab_size]
        if missing:
            raise BundleError(f"masked-LM bundle {folder} names no {', '.join(missing)} token id in "
                              f"[0, {self.vocab_size}) (manifest special_tokens)")
        self.cls, self.sep, self.pad, self.mask = (special[t] for t in ("cls", "sep", "pad", "mask"))
        self.session, self.providers = open_session(folder / manifest["files"]["model"], manifest, device, threads)
        self.token_types = "token_type_ids" in {i.name for i in self.session.get_inputs()}
        try:  # the largest input the manifest promises, so wrong model numbers fail at load, named
            self._run([[self.vocab_size - 1] * self.max_length])
        except Exception as exc:  # onnxruntime raises several unrelated types; all mean the numbers are wrong
            raise BundleError(f"bundle {folder}: the graph fails on {self.max_length} tokens of id "
                              f"{self.vocab_size - 1} (manifest model block): {first_line(exc)}") from exc

    @property
    def provider(self) -> str:
        return self.providers.name

    def encode(self, text: str) -> list[int]:
        """[CLS] text [SEP] as token ids."""
        if not isinstance(text, str):
            raise InputError(f"a text must be a str, got {type(text).__name__}")
        if self.tokenizer is None:
            raise InputError("this bundle has no tokenizer: pass token ids instead of text")
        return [self.cls, *self.tokenizer.encode(text, add_special_tokens=False).ids, self.sep]

    def _ids(self, item) -> list[int]:
        ids = self.encode(item) if isinstance(item, str) else item
        if not isinstance(ids, Sequence) or not ids or not all(
                isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= i < self.vocab_size for i in ids):
            raise InputError(f"token ids must be a non-empty list of ints in [0, {self.vocab_size}), got {ids!r:.80}")
        if len(ids) > self.max_length:
            raise InputError(f"{len(ids)} tokens is over the model's {self.max_length} positions")
        return [int(i) for i in ids]

    def _run(self, rows: list[list[int]]) -> np.ndarray:
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad, dtype=np.int64)
        mask = np.zeros_like(ids)
        for b, row in enumerate(rows):
            ids[b, : len(row)], mask[b, : len(row)] = row, 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self.token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return self.session.run(["logits"], feeds)[0]

    def logits(self, inputs: Sequence[str | Sequence[int]]) -> list[np.ndarray]:
        """Per input (a text, read as [CLS] text [SEP], or token ids taken as they are): its (tokens, vocab) logits."""
        if isinstance(inputs, str) or not isinstance(inputs, Sequence) or not inputs:
            raise InputError("inputs must be a non-empty list of texts or token-id lists")
        rows = [self._ids(item) for item in inputs]
        out = self._run(rows)
        return [out[b, : len(row)] for b, row in enumerate(rows)]

    def fill(self, text: str | Sequence[int], top_k: int = 5) -> list[list[Filled]]:
        """For each mask of `text` (a text with "[MASK]" in it, or token ids), its top_k tokens, most probable first."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= self.vocab_size:
            raise InputError(f"top_k must be an int in [1, {self.vocab_size}], got {top_k!r}")
        ids = self._ids(text)
        masks = [i for i, token in enumerate(ids) if token == self.mask]
        if not masks:
            raise InputError("the text has no mask token to fill")
        logits = self._run([ids])[0, masks].astype(np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        best = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        token = self.tokenizer.id_to_token if self.tokenizer is not None else str
        return [[Filled(token(int(i)), int(i), float(p[i])) for i in row] for p, row in zip(probs, best, strict=True)]
