"""What decoding hands back: per-token events, finished generations, and kept prefixes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cache import KVCache

FINISH_REASONS = ("length", "stop_token", "stop_string", "cancelled", "error")


@dataclass
class StreamEvent:
    request: int  # the request's id: its index in a `generate`/`stream` call, or an `Engine.submit` handle's id
    token_id: int | None  # None on the event that ends a cancelled or failed request
    text: str  # decoded text this token added ("" without a tokenizer)
    finished: str | None = None  # one of FINISH_REASONS on the request's last event


@dataclass
class Generation:
    prompt_index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"
    score: float | None = None  # beam search: sum of log-probabilities


@dataclass
class Prefix:
    """A kept KV cache of one sequence: continue it without re-running it, or fork it for several continuations."""

    token_ids: list[int]
    segment_ids: list[int] | None
    cache: KVCache  # one row, sized to exactly its tokens
    logits: np.ndarray  # next-token logits after the last token (vocab,)
