"""BERT-family reader backend: the tokenizer's tokens are the units, read as [CLS] question [SEP] window [SEP]
(BERT, DistilBERT) or <s> question </s></s> window </s> (RoBERTa: `qa.separators` 2; the manifest's special_tokens
name each architecture's own cls, sep and pad).

The graph takes (input_ids, attention_mask) and, when its architecture has token types, token_type_ids (0 for the
question, 1 for the window); it returns start/end logits per token.
Spans are ranked by start + end logit; the logits are log-softmaxed over each window's passage tokens
first, which shifts every span of a row by the same constant (same ranking) and makes exp(score) the
span's probability, a positive score that voting can add up across windows and passages. A reader trained
to point at the first token when a window holds no answer (SQuAD 2.0 style; manifest `qa.null_token`) has
that token's logit in the normaliser too, so a window without an answer gives every span a low probability.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..bundle import load_tokenizer
from ..errors import BundleError
from .units import Encoded, Window, pad_rows


def _log_softmax(x: np.ndarray, valid: np.ndarray, null: np.ndarray | None = None) -> np.ndarray:
    """Log-softmax of each row's valid entries; `null` (one logit per row), when given, joins the normaliser only."""
    x = np.where(valid, x, -np.inf)
    pool = x if null is None else np.concatenate([x, null[:, None]], axis=1)
    peak = np.max(pool, axis=1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    total = np.exp(pool - peak).sum(axis=1, keepdims=True)
    return x - peak - np.log(np.maximum(total, np.finfo(np.float64).tiny))


class BertFeatures:
    """Text -> WordPiece ids and offsets with the bundle's tokenizer.json, and logits -> span log-scores."""

    combine = "sum"

    def __init__(self, folder: Path, manifest: dict) -> None:
        name = manifest["files"].get("tokenizer")
        if not name:
            raise BundleError(f"BERT reader bundle {folder} has no tokenizer.json: it cannot read text")
        sizes = manifest.get("model", {})
        for field in ("vocab_size", "max_positions"):
            if isinstance(sizes.get(field), bool) or not isinstance(sizes.get(field), int) or sizes[field] < 1:
                raise BundleError(f"manifest field 'model.{field}' must be an integer >= 1, got {sizes.get(field)!r}")
        padding_idx = sizes.get("padding_idx")  # RoBERTa's positions start past it
        if padding_idx is not None and (isinstance(padding_idx, bool) or not isinstance(padding_idx, int)
                                        or not 0 <= padding_idx < sizes["max_positions"]):
            raise BundleError(f"manifest field 'model.padding_idx' must be null or an integer in "
                              f"[0, model.max_positions), got {padding_idx!r}")
        positions = sizes["max_positions"] - (0 if padding_idx is None else padding_idx + 1)
        if manifest["qa"]["window"] > positions:
            raise BundleError(f"manifest field 'qa.window' ({manifest['qa']['window']}) exceeds the model's "
                              f"positions ({positions}: model.max_positions less model.padding_idx + 1 if set)")
        separators = manifest["qa"].get("separators", 1)
        if separators not in (1, 2) or isinstance(separators, bool):
            raise BundleError(f"manifest field 'qa.separators' must be 1 or 2, got {separators!r}")
        self.vocab_size, self.max_positions = sizes["vocab_size"], sizes["max_positions"]
        self.type_vocab_size = sizes.get("type_vocab_size", 2)
        self.token_types = "token_type_ids" in {spec.get("name") for spec in manifest["inputs"]}
        self.specials = 2 + separators  # cls, the separators after the question, the closing sep
        self.tokenizer = load_tokenizer(folder, manifest, self.vocab_size)
        special = manifest["special_tokens"]
        missing = [t for t in ("cls", "sep", "pad") if isinstance(special.get(t), bool)
                   or not isinstance(special.get(t), int) or not 0 <= special[t] < self.vocab_size]
        if missing:
            raise BundleError(f"BERT reader bundle {folder} names no {', '.join(missing)} token id in "
                              f"[0, {self.vocab_size}) (manifest special_tokens)")
        self.cls, self.sep, self.pad = special["cls"], special["sep"], special["pad"]
        self.max_question_len = manifest["qa"]["max_question_len"]
        self.null_token = manifest["qa"].get("null_token", False)

    def _encode(self, text: str) -> Encoded:
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        ids = np.asarray(encoding.ids, dtype=np.int64).reshape(-1, 1)
        return Encoded(ids, np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2))

    def question(self, text: str) -> Encoded:
        encoded = self._encode(text)
        return Encoded(encoded.ids[: self.max_question_len], encoded.offsets[: self.max_question_len])

    def passage(self, text: str) -> Encoded:
        return self._encode(text)

    def window_size(self, question: Encoded, window: int) -> int:
        """Passage tokens per window: the sequence length less the question and the special tokens."""
        return window - len(question) - self.specials

    def feeds(self, rows: list[Window]) -> dict[str, np.ndarray]:
        ids, types = [], []
        for row in rows:
            q, p = row.q.ids[:, 0], row.p.ids[row.start : row.end, 0]
            ids.append(np.concatenate([[self.cls], q, [self.sep] * (self.specials - 2), p, [self.sep]]))
            types.append(np.concatenate([np.zeros(len(q) + self.specials - 1, np.int64), np.ones(len(p) + 1, np.int64)]))
        feeds = {"input_ids": pad_rows(ids, self.pad), "attention_mask": pad_rows([np.ones(len(r), np.int64) for r in ids])}
        if self.token_types:
            feeds["token_type_ids"] = pad_rows(types)
        return feeds

    def probe_feeds(self, window: int) -> dict[str, np.ndarray]:
        """The largest inputs the manifest promises: `window` tokens of the last id and the last segment."""
        full = np.full((1, window), self.vocab_size - 1, dtype=np.int64)
        feeds = {"input_ids": full, "attention_mask": np.ones_like(full)}
        if self.token_types:
            feeds["token_type_ids"] = np.full_like(full, self.type_vocab_size - 1)
        return feeds

    def scores(self, outputs: dict[str, np.ndarray], feeds: dict[str, np.ndarray], rows: list[Window]):
        """(start, end, valid) over each row's window units: log-softmaxed logits of the passage tokens."""
        first = np.array([len(row.q) + self.specials - 1 for row in rows])[:, None]
        units = np.arange(max(row.length for row in rows))[None, :]
        valid = units < np.array([row.length for row in rows])[:, None]
        index = np.minimum(first + units, feeds["input_ids"].shape[1] - 1)
        start_logits, end_logits = (outputs[name].astype(np.float64) for name in ("start_logits", "end_logits"))
        start = np.take_along_axis(start_logits, index, axis=1)
        end = np.take_along_axis(end_logits, index, axis=1)
        if not self.null_token:
            return _log_softmax(start, valid), _log_softmax(end, valid), valid
        return _log_softmax(start, valid, start_logits[:, 0]), _log_softmax(end, valid, end_logits[:, 0]), valid
