"""The simple front door: `generate` and `stream` over a list of prompts, and `prefill` to keep a prefix.

A call checks every prompt and option first, makes one `Request` per prompt and sample, sizes an `Engine` for
them (slots: all requests or `max_active`; capacity: the longest prompt plus max_new_tokens), and steps it
in the calling thread until every request is done.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ..errors import InputError
from .cache import KVCache
from .engine import Engine, Request, check_whole_prefix
from .options import DecodeOptions, decode_options, is_int
from .step import Step
from .types import Generation, Prefix, StreamEvent

MAX_BATCH = 64  # rows decoded together (the cache is sized for them)
MAX_REQUESTS = 100_000  # prompts x samples in one call: refused before any work beyond this


def encode_prompt(model, prompt) -> list[int]:
    """Token ids of a prompt given as text or as ids, checked against the vocabulary."""
    if isinstance(prompt, str):
        ids = model.encode(prompt) if prompt else []
    elif isinstance(prompt, np.ndarray):
        if prompt.ndim != 1 or not (np.issubdtype(prompt.dtype, np.integer) or prompt.size == 0):
            raise InputError(f"a prompt array must be 1-D token ids, got shape {prompt.shape} of {prompt.dtype}")
        ids = prompt.tolist()
    elif isinstance(prompt, (list, tuple)):
        bad = next((t for t in prompt if not is_int(t)), None)
        if bad is not None:
            raise InputError(f"a prompt's token ids must be integers, got {bad!r}")
        ids = [int(t) for t in prompt]
    else:
        raise InputError(f"a prompt must be text or a list of token ids, got {type(prompt).__name__}")
    if not ids:
        raise InputError("empty prompt: it has no tokens")
    if min(ids) < 0 or max(ids) >= model.vocab_size:
        raise InputError(f"prompt holds token ids outside [0, {model.vocab_size})")
    return ids


def make_requests(model, prompts: Sequence, options: DecodeOptions, seed=None, num_return_sequences: int = 1,
                  segment_ids=None, reply_segment: int | Sequence[int] = 0,
                  prefix: Prefix | None = None) -> list[Request]:
    """One request per prompt and sample, each with its own seed (or fresh entropy when `seed` is None)."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise InputError("prompts must be a non-empty list of strings or token-id lists")
    if not is_int(num_return_sequences) or not 1 <= num_return_sequences <= MAX_BATCH:
        raise InputError(f"num_return_sequences must be an integer in [1, {MAX_BATCH}], got {num_return_sequences!r}")
    if len(prompts) * num_return_sequences > MAX_REQUESTS:
        raise InputError(f"{len(prompts)} prompts x {num_return_sequences} samples is over {MAX_REQUESTS} requests")
    check_prefix(model, prefix)
    encoded = [encode_prompt(model, p) for p in prompts]
    for ids in encoded:
        check_whole_prefix(model, len(prefix.token_ids) if prefix else 0, len(ids))
    segments = _segments(model, segment_ids, encoded)
    if is_int(reply_segment):
        replies = [reply_segment] * len(encoded)
    elif isinstance(reply_segment, (list, tuple)):
        replies = list(reply_segment)
    else:
        replies = []
    if len(replies) != len(encoded) or not all(is_int(r) and _segment_ok(model, r) for r in replies):
        raise InputError(f"reply_segment must be one valid segment id, or one per prompt, got {reply_segment!r}")
    seeds = row_seeds(seed, len(encoded), num_return_sequences)
    return [Request(ids, options, segments[i], int(replies[i]), prefix, seeds[i * num_return_sequences + k])
            for i, ids in enumerate(encoded) for k in range(num_return_sequences)]


def _segment_count(model) -> int:
    return model.manifest["model"].get("n_segments") or 1


def _segment_ok(model, segment: int) -> bool:
    return 0 <= segment < _segment_count(model)


def check_prefix(model, prefix) -> None:
    """A prefix must come from this model's prefill: another model's cache has other shapes."""
    if prefix is None:
        return
    if not isinstance(prefix, Prefix):
        raise InputError(f"prefix must be a Prefix from this model's prefill(), got {type(prefix).__name__}")
    if prefix.cache.model is not model:
        raise InputError("prefix must be a Prefix from this model's prefill(); it comes from another model")


def _segments(model, segment_ids, encoded: list[list[int]]) -> list[list[int] | None]:
    if segment_ids is None:
        return [None] * len(encoded)
    if not isinstance(segment_ids, (list, tuple)) or not all(isinstance(s, (list, tuple)) for s in segment_ids):
        raise InputError("segment_ids must be a list of lists: one segment id per prompt token")
    segments = [list(s) for s in segment_ids]
    if len(segments) != len(encoded) or any(len(s) != len(e) for s, e in zip(segments, encoded)):
        raise InputError("segment_ids must give one segment id per prompt token")
    n = _segment_count(model)
    if not all(is_int(t) and 0 <= t < n for row in segments for t in row):
        raise InputError("segment_ids hold a value that is not a segment id of this model")
    return segments


def row_seeds(seed, n_prompts: int, n_samples: int) -> list:
    """Per-request seeds: a seeded request draws the same numbers alone or inside any batch; None: fresh entropy."""
    if seed is None:
        return [None] * (n_prompts * n_samples)
    if is_int(seed) and seed >= 0:
        base = [int(seed)] * n_prompts
    elif isinstance(seed, (list, tuple)) and all(is_int(s) and s >= 0 for s in seed):
        base = [int(s) for s in seed]
        if len(base) != n_prompts:
            raise InputError(f"seed list has {len(base)} entries for {n_prompts} prompts")
    else:
        raise InputError(f"seed must be an integer >= 0 or a list of them (one per prompt), got {seed!r}")
    return [[s, k] for s in base for k in range(n_samples)]


def stream(model, prompts: Sequence, *, seed=None, num_return_sequences: int = 1, segment_ids=None,
           reply_segment: int | Sequence[int] = 0, prefix: Prefix | None = None, max_active: int | None = None,
           speculate: int = 0, draft=None, **options) -> Iterator[StreamEvent]:
    """Yield one event per generated token, as soon as it is chosen.

    Every prompt and option is checked when this is called, before the first event is asked for. More requests
    than `max_active` (default: all, at most MAX_BATCH) run by continuous batching: a finished request's slot goes
    to the next waiting one. `speculate` > 0 verifies up to that many draft tokens per step (see `Engine`), drafted
    by prompt lookup or by the `draft` model: the same greedy tokens, fewer steps when the drafts agree.
    """
    checked = decode_options(model, **options)
    requests = make_requests(model, prompts, checked, seed, num_return_sequences, segment_ids, reply_segment, prefix)
    if max_active is not None and not (is_int(max_active) and max_active >= 1):
        raise InputError(f"max_active must be an integer >= 1, got {max_active!r}")
    slots = min(len(requests), max_active or len(requests))
    if slots > MAX_BATCH:
        raise InputError(f"batch of {slots} rows exceeds the configured limit of {MAX_BATCH}")
    start = len(prefix.token_ids) if prefix else 0
    longest = start + max(len(r.tokens) for r in requests)
    if longest >= model.max_positions:
        raise InputError(f"prompt of {longest} tokens leaves no room in the model's {model.max_positions} positions")
    engine = Engine(model, slots, min(model.max_positions, longest + checked.max_new_tokens), speculate=speculate,
                    draft=draft)
    return _events(engine, [engine.submit(r, sink=_discard) for r in requests])


def _events(engine: Engine, handles: list) -> Iterator[StreamEvent]:
    while engine.busy:
        for event in engine.step():
            if event.finished == "error":
                raise handles[event.request].error
            yield event


def _discard(event: StreamEvent) -> None:
    """The sink of requests whose events the caller reads from `Engine.step` itself."""


def generate(model, prompts: Sequence, **options) -> list[Generation]:
    """Run `stream` to the end; one `Generation` per prompt and sample."""
    events = stream(model, prompts, **options)  # checks every option before the results are allocated
    n = options.get("num_return_sequences", 1)
    results = [Generation(prompt_index=i // n) for i in range(len(prompts) * n)]
    for event in events:
        result = results[event.request]
        result.token_ids.append(event.token_id)
        result.text += event.text
        if event.finished:
            result.finish_reason = event.finished
    return results


def prompt_with_segments(model, prompt, segment_ids: Sequence[int] | None, start: int) -> tuple[list[int], list[int]]:
    """A prompt's token ids and segment ids (zeros when none are given), checked to follow `start` kept tokens with
    room for at least one more."""
    if segment_ids is not None and not isinstance(segment_ids, (list, tuple)):
        raise InputError("segment_ids must be a list: one segment id per prompt token")
    ids = encode_prompt(model, prompt)
    check_whole_prefix(model, start, len(ids))
    if start + len(ids) >= model.max_positions:
        raise InputError(f"{start + len(ids)} tokens leave no room in the model's {model.max_positions} positions")
    return ids, _segments(model, None if segment_ids is None else [segment_ids], [ids])[0] or [0] * len(ids)


def prefill(model, prompt, segment_ids: Sequence[int] | None = None, prefix: Prefix | None = None) -> Prefix:
    """Run `prompt` (after `prefix`, if given) and keep its cache for later continuations."""
    check_prefix(model, prefix)
    start = len(prefix.token_ids) if prefix else 0
    ids, segments = prompt_with_segments(model, prompt, segment_ids, start)
    capacity = start + len(ids)
    cache = prefix.cache.take([0], capacity=capacity) if prefix else KVCache(model, 1, capacity)
    logits = Step(model, cache).feed([ids], [segments] if model.uses_segments else None)
    base_segments = prefix.segment_ids if prefix else []
    return Prefix((prefix.token_ids if prefix else []) + ids, (base_segments or []) + segments, cache,
                  logits[0].copy())
