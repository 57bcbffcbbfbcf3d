"""Choosing the next token from logits: repetition penalty, temperature, top-k then top-p, greedy.

Everything works on a (rows, vocab) float32 array in place: no copy of the logits per step.
Semantics follow the seed: top-k first, renormalise, then top-p keeps the smallest prefix of tokens
(by descending probability) whose mass reaches p, including the token that crosses p.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class SamplingOptions:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0


def apply_repetition_penalty(logits: np.ndarray, seen: list[np.ndarray], penalty: float) -> None:
    """CTRL-style penalty on tokens already in each row: divide positive logits, multiply negative ones.

    Results stay finite (clipped to float32's range): an extreme penalty ranks seen tokens first or last, where an
    overflow to inf would leave the row nothing finite to choose from.
    """
    if penalty == 1.0:
        return
    largest = np.finfo(np.float32).max
    for row, tokens in enumerate(seen):
        if tokens.size:
            values = logits[row, tokens]
            with np.errstate(over="ignore", divide="ignore"):  # a penalty below float32's range divides by 0
                logits[row, tokens] = np.clip(np.where(values > 0, values / penalty, values * penalty), -largest, largest)


def top_k_top_p_filter(logits: np.ndarray, top_k: int, top_p: float) -> None:
    """Set filtered-out logits to -inf, in place (rows independent)."""
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = np.partition(logits, vocab - top_k, axis=-1)[:, vocab - top_k, None]
        logits[logits < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(-logits, axis=-1, kind="stable")
        sorted_logits = np.take_along_axis(logits, order, axis=-1)
        probs = np.exp(sorted_logits - sorted_logits[:, :1])
        probs /= probs.sum(axis=-1, keepdims=True)
        before = np.cumsum(probs, axis=-1) - probs  # mass strictly before each token
        drop = before >= top_p  # keeps the token that crosses p
        drop[:, 0] = False  # and always the most likely one (a top_p below float32's range rounds to 0)
        np.put_along_axis(logits, order, np.where(drop, -np.inf, sorted_logits), axis=-1)


def choose_tokens(logits: np.ndarray, options: SamplingOptions, rngs: list[np.random.Generator]) -> np.ndarray:
    """Next token per row; `logits` (rows, vocab) is modified in place.

    A row with no finite logit left (a processor banned every token, or wrote NaN) raises an InputError: there is
    nothing to choose, and emitting token 0 would pass padding off as text.
    """
    if not options.do_sample:
        tokens = logits.argmax(axis=-1)  # argmax finds a nan first; a row that bans every token gives -inf
        _check_usable(logits[np.arange(len(tokens)), tokens])
        return tokens
    probs = probabilities(logits, options)
    # one uniform draw per row from that row's own generator: a row samples the same alone or in a batch
    cumulative = np.cumsum(probs, axis=-1)
    draws = np.array([rng.random() for rng in rngs]) * cumulative[:, -1]
    return np.minimum((cumulative <= draws[:, None]).sum(axis=-1), probs.shape[-1] - 1)


def probabilities(logits: np.ndarray, options: SamplingOptions) -> np.ndarray:
    """The sampling distribution of each row (temperature, top-k, top-p), computed in place in `logits`."""
    best = logits.max(axis=-1, keepdims=True)
    _check_usable(best[:, 0])
    # shift before scaling: a tiny temperature then sends every other token to -inf instead of overflowing to nan
    logits -= best
    if options.temperature != 1.0:
        temperature = logits.dtype.type(options.temperature)
        if temperature == 0:  # below the logits' precision (float32 from 1e-45): the limit, all on the best tokens
            logits[logits < 0] = -np.inf
        else:
            with np.errstate(over="ignore"):  # -x / tiny is meant to be -inf
                logits /= temperature
    top_k_top_p_filter(logits, options.top_k, options.top_p)
    probs = np.exp(logits, out=logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def accept_draft(probs: np.ndarray, draft: int, rng: np.random.Generator, draft_probs: np.ndarray | None = None) -> int:
    """Speculative sampling's acceptance rule: keep the draft with probability min(1, p(draft) / q(draft)), else draw
    from max(p - q, 0) renormalised. q is the distribution the draft was sampled from (a draft model's), or None for a
    draft proposed with certainty (prompt lookup, or a greedy draft model): q is then one-hot. Either way the token
    is distributed exactly as p."""
    proposed = 1.0 if draft_probs is None else float(draft_probs[draft])
    if rng.random() * proposed < probs[draft]:
        return draft
    rest = probs.astype(np.float64)
    if draft_probs is None:
        rest[draft] = 0.0
    else:
        np.maximum(rest - draft_probs, 0.0, out=rest)
    return sample_from(rest, rng, fallback=draft)


def sample_from(weights: np.ndarray, rng: np.random.Generator, fallback: int = 0) -> int:
    """One index drawn in proportion to `weights` (not necessarily normalised); `fallback` if they sum to 0."""
    cumulative = np.cumsum(weights, dtype=np.float64)
    if not cumulative[-1] > 0:
        return fallback
    return int(min(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"), len(weights) - 1))


def _check_usable(best: np.ndarray) -> None:
    unusable = ~np.isfinite(best)
    if unusable.any():
        raise InputError(f"row {int(np.flatnonzero(unusable)[0])} has no finite logits to choose a token from")
