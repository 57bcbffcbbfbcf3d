"""Span decoding and answer voting in numpy: the part of extractive QA that needs no model.

A span is [i, j) over a passage's units (characters or tokens). Its score combines the start score of
unit i and the end score of unit j-1: a product for probabilities (DGCNN pointers) or a sum for logits
(BERT). Only spans with j-1 >= i and length <= max_len count, which is the band of the start x end
matrix just above its diagonal; decoding builds that band, never the full matrix.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Span = tuple[int, int, float]  # [start, end) in units, score
COMBINE = ("product", "sum")


def band_scores(start: np.ndarray, end: np.ndarray, valid: np.ndarray, max_len: int, combine: str) -> np.ndarray:
    """(batch, n, d) scores of span [i, i+k+1) at [b, i, k], d = min(max_len, n); -inf where not allowed."""
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    batch, n = start.shape
    d = max(1, min(max_len, n))
    end_padded = np.concatenate([end, np.zeros((batch, d - 1), dtype=end.dtype)], axis=1)
    valid_padded = np.concatenate([valid, np.zeros((batch, d - 1), dtype=bool)], axis=1)
    band_end = sliding_window_view(end_padded, d, axis=1)  # [b, i, k] = end[b, i + k]
    band_ok = valid[:, :, None] & sliding_window_view(valid_padded, d, axis=1)
    scores = start[:, :, None] * band_end if combine == "product" else start[:, :, None] + band_end
    return np.where(band_ok, scores, -np.inf)


def top_spans(
    start: np.ndarray,
    end: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    max_len: int,
    top_k: int = 1,
    combine: str = "product",
    threshold: float | None = None,
) -> list[list[Span]]:
    """The top_k spans of each row, best first: (start, end exclusive, score).

    start, end: (batch, n) scores; valid: (batch, n) bool, True where a unit may start or end a span
    (its real units; padding and non-passage tokens False). Spans scoring below `threshold` are dropped.
    """
    start, end = np.atleast_2d(start), np.atleast_2d(end)
    valid = np.ones(start.shape, dtype=bool) if valid is None else np.atleast_2d(valid).astype(bool)
    if start.shape[1] == 0:
        return [[] for _ in range(start.shape[0])]
    scores = band_scores(start, end, valid, max_len, combine)
    batch, _, d = scores.shape
    flat = scores.reshape(batch, -1)
    k = min(top_k, flat.shape[1])
    best = np.argpartition(-flat, k - 1, axis=1)[:, :k]
    best_scores = np.take_along_axis(flat, best, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    best, best_scores = np.take_along_axis(best, order, axis=1), np.take_along_axis(best_scores, order, axis=1)
    keep = np.isfinite(best_scores) & (best_scores >= (-np.inf if threshold is None else threshold))
    first, length = np.divmod(best, d)
    return [
        [(int(i), int(i + k + 1), float(s)) for i, k, s, ok in zip(first[b], length[b], best_scores[b], keep[b]) if ok]
        for b in range(batch)
    ]


def best_span(start: np.ndarray, end: np.ndarray, max_len: int) -> Span:
    """Span [i, j) maximising start[i]·end[j-1] with j-1 ≥ i and length ≤ max_len."""
    return top_spans(np.asarray(start)[None], np.asarray(end)[None], max_len=max_len)[0][0]


def vote_totals(found: dict[str, Sequence[float]]) -> dict[str, float]:
    """Σs²/(1+Σs) per answer text over the scores of its occurrences.

    Summing squares rewards an answer found confidently in several passages while the 1+Σs denominator
    keeps many weak hits from outvoting one strong one.
    """
    return {text: float(np.square(s).sum() / (1 + np.sum(s))) for text, s in found.items()}


def vote(passages: Sequence[str], starts: Sequence[np.ndarray], ends: Sequence[np.ndarray], max_len: int) -> tuple[str, float]:
    """Best span per passage, then answers voted across passages by Σs²/(1+Σs)."""
    found: dict[str, list[float]] = defaultdict(list)
    for text, s, e in zip(passages, starts, ends, strict=True):
        n = min(len(text), len(s))
        if n == 0:
            continue
        i, j, score = best_span(np.asarray(s[:n]), np.asarray(e[:n]), max_len)
        found[text[i:j]].append(score)
    if not found:
        return "", 0.0
    totals = vote_totals(found)
    answer = max(totals, key=totals.__getitem__)
    return answer, totals[answer]
