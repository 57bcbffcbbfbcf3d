"""The decode loop: continuous batching over fixed slots, greedy or sampled tokens, stop rules, streaming.

A `Batcher` owns `slots` rows of KV cache. Requests wait in a queue; whenever a slot is free, the next request is
prefilled into it (alone, or all together when the batch starts fresh) and joins the running batch. Each step
feeds every slot its last token in one onnxruntime call through IO binding and yields one event per token.
`Decoder.stream` / `Decoder.generate` wrap that for a list of prompts; a server can keep one `Batcher` and
`submit` as requests arrive.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .kv_cache import KVCache
from .sampling import SamplingOptions, apply_repetition_penalty, choose_tokens
from .step_binding import StepBinding
from .text_stream import TextStream

LogitsProcessor = Callable[[int, list[int], np.ndarray], None]


@dataclass
class StreamEvent:
    row: int  # request index (prompt index * num_return_sequences + sample index)
    token_id: int
    text: str  # decoded text this token added ("" without a tokenizer)
    finished: str | None = None  # finish reason when this is the request's last token


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
    cache: KVCache
    logits: np.ndarray  # next-token logits after the last token (vocab,)


@dataclass
class DecodeSettings:
    max_new_tokens: int = 32
    min_new_tokens: int = 0
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    stop_token_ids: frozenset = frozenset()
    stop_strings: tuple = ()
    logits_processor: LogitsProcessor | None = None


@dataclass
class Request:
    index: int
    tokens: list[int]  # to feed on admission (after the prefix, if any)
    segments: list[int] | None
    reply_segment: int
    rng: np.random.Generator
    history: list[int]  # every token of the sequence so far (prefix + prompt + generated)
    generated: list[int] = field(default_factory=list)
    text_stream: TextStream | None = None  # the generated text (bundles with a tokenizer)
    finished: str | None = None


def decode_steps(model, cache: KVCache) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    """The engine's decode step over `cache`: one token (and segment id) per row in, (rows, vocab) logits out.

    Shared-buffer caches bind the step's inputs once (`StepBinding`); concat caches bind fresh presents each step.
    """
    if cache.shared:
        return StepBinding(model, cache)

    def step(tokens: np.ndarray, segments: np.ndarray | None = None) -> np.ndarray:
        types = None if segments is None else np.asarray(segments)[:, None].tolist()
        return feed_tokens(model, cache, np.asarray(tokens)[:, None].tolist(), types)

    return step


def feed_tokens(model, cache: KVCache, tokens: list[list[int]], segments=None, every_position: bool = False):
    """Feed each cache row its tokens (ragged) in one call.

    Returns each row's last logits (rows, vocab), or with `every_position` (rows of equal length only) the
    logits after each fed token (rows, tokens, vocab).
    """
    counts = np.array([len(t) for t in tokens], dtype=np.int64)
    width = int(counts.max())
    mask = cache.step_mask(counts)
    ids = np.zeros((cache.rows, width), dtype=np.int64)
    types = np.zeros((cache.rows, width), dtype=np.int64)
    positions = np.zeros((cache.rows, width), dtype=np.int64)
    for b, row in enumerate(tokens):
        n = len(row)
        span = slice(0, n) if cache.shared else slice(width - n, width)  # right- or left-padded
        ids[b, span] = row
        positions[b, span] = cache.lengths[b] + np.arange(n)
        if segments is not None:
            types[b, span] = segments[b]
    if every_position:
        if (counts != width).any():
            raise ValueError("every_position needs the same number of tokens in every row")
        wanted = np.broadcast_to(np.arange(width), (cache.rows, width))
    else:
        wanted = (counts - 1 if cache.shared else np.full(cache.rows, width - 1))[:, None]
    logits, presents = model.forward(ids, positions, mask, wanted, types, cache)
    cache.advance(presents, mask, counts)
    return logits if every_position else logits[:, 0]


class Batcher:
    """Continuous batching: up to `slots` requests decode together; waiting ones join as slots free up."""

    def __init__(self, model, settings: DecodeSettings, slots: int, capacity: int, prefix: Prefix | None = None):
        self.model, self.settings, self.prefix = model, settings, prefix
        self.capacity = capacity
        self.cache = KVCache(model, slots, capacity)
        self._decode = decode_steps(model, self.cache)
        self.slots: list[Request | None] = [None] * slots
        self.waiting: deque[Request] = deque()
        self.fresh = True  # no slot used yet: admit the first requests with one batched prefill
        self._stops = np.array(sorted(settings.stop_token_ids), dtype=np.int64)

    def submit(self, request: Request) -> None:
        self.waiting.append(request)

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(r is not None and r.finished is None for r in self.slots)

    # ------------------------------------------------------------------ one round
    def step(self) -> list[StreamEvent]:
        """Admit waiting requests into free slots (their prefill gives their first tokens), or else run one decode
        step for the running ones.

        A round that admits returns at once, so a stream hands out first tokens without waiting for a decode step;
        the rows already running wait one round, which changes no token.
        """
        events = self._admit()
        if events:
            return events
        running = [i for i, r in enumerate(self.slots) if r is not None and r.finished is None and r.generated]
        if running:
            last = np.array([r.generated[-1] if r is not None and r.generated else 0 for r in self.slots])
            segments = None
            if self.model.uses_segments:
                segments = np.array([r.reply_segment if r is not None else 0 for r in self.slots])
            logits = self._decode(last, segments)
            events = self._choose(running, logits[running])
        return events

    def _admit(self) -> list[StreamEvent]:
        free = [i for i, r in enumerate(self.slots) if r is None or r.finished is not None]
        if not free or not self.waiting:
            return []
        admitted = []
        while free and self.waiting:
            slot = free.pop(0)
            self.slots[slot] = self.waiting.popleft()
            admitted.append(slot)
        if self.fresh and self.prefix is None and len(admitted) == len(self.slots):
            prompts = [self.slots[s].tokens for s in admitted]
            logits = feed_tokens(self.model, self.cache, prompts, self._segments(admitted))
        else:
            logits = np.stack([self._prefill_slot(s) for s in admitted])
        self.fresh = False
        return self._choose(admitted, logits)

    def _prefill_slot(self, slot: int) -> np.ndarray:
        request = self.slots[slot]
        types = self._segments([slot])
        if self.prefix is None and self.cache.can_view_rows:
            view = self.cache.row_view(slot)  # writes straight into the batch's buffer
            view.lengths[:] = 0
            logits = feed_tokens(self.model, view, [request.tokens], types)
            self.cache.lengths[slot] = view.lengths[0]
            return logits[0]
        single = self.prefix.cache.take([0]) if self.prefix else KVCache(self.model, 1, self.capacity)
        logits = feed_tokens(self.model, single, [request.tokens], types)
        self.cache.insert(slot, single)
        return logits[0]

    def _segments(self, slots: list[int]) -> list[list[int]] | None:
        if not self.model.uses_segments:
            return None
        return [self.slots[s].segments for s in slots]

    # ------------------------------------------------------------------ choosing tokens
    def _choose(self, slots: list[int], logits: np.ndarray) -> list[StreamEvent]:
        settings = self.settings
        requests = [self.slots[s] for s in slots]
        if settings.sampling.repetition_penalty != 1.0:
            seen = [np.asarray(r.history, dtype=np.int64) for r in requests]
            apply_repetition_penalty(logits, seen, settings.sampling.repetition_penalty)
        if self._stops.size:
            for row, r in enumerate(requests):
                if len(r.generated) < settings.min_new_tokens:
                    logits[row, self._stops] = -np.inf
        if settings.logits_processor is not None:
            for row, r in enumerate(requests):
                settings.logits_processor(r.index, r.generated, logits[row])
        tokens = choose_tokens(logits, settings.sampling, [r.rng for r in requests])
        return [self._emit(r, int(t)) for r, t in zip(requests, tokens)]

    def _emit(self, request: Request, token: int) -> StreamEvent:
        request.generated.append(token)
        request.history.append(token)
        stream = request.text_stream
        delta = stream.push(token) if stream is not None else ""
        if token in self.settings.stop_token_ids:
            request.finished = "stop_token"
        elif delta and any(s in stream.text for s in self.settings.stop_strings):
            request.finished = "stop_string"
        elif len(request.generated) >= self.settings.max_new_tokens or len(request.history) >= self.capacity:
            request.finished = "length"
        if request.finished and stream is not None:
            delta += stream.flush()
        return StreamEvent(request.index, token, delta, request.finished)


class Decoder:
    """Generation over a loaded `CausalLM`."""

    def __init__(self, model, max_batch: int = 64) -> None:
        self.model = model
        self.max_batch = max_batch

    def encode_prompt(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.model.encode(prompt) if prompt else []
        elif isinstance(prompt, (list, tuple, np.ndarray)):
            ids = [int(t) for t in np.asarray(prompt, dtype=np.int64).reshape(-1)]
        else:
            raise InputError(f"a prompt must be text or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise InputError("empty prompt: it has no tokens")
        if min(ids) < 0 or max(ids) >= self.model.vocab_size:
            raise InputError(f"prompt holds token ids outside [0, {self.model.vocab_size})")
        return ids

    def settings(
        self,
        max_new_tokens: int = 32,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        stop_token_ids: Sequence[int] | None = None,
        stop_strings: Sequence[str] = (),
        logits_processor: LogitsProcessor | None = None,
    ) -> DecodeSettings:
        """Check the decoding options and gather them; the bundle's eos is the default stop token."""
        sampling = SamplingOptions(do_sample, temperature, top_k, top_p, repetition_penalty).check()
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if not isinstance(min_new_tokens, int) or not 0 <= min_new_tokens <= max_new_tokens:
            raise InputError(f"min_new_tokens must be an integer in [0, max_new_tokens], got {min_new_tokens!r}")
        if stop_token_ids is None:
            eos = self.model.manifest["special_tokens"].get("eos")
            stop_token_ids = [] if eos is None else [eos]
        for token in stop_token_ids:
            if not (isinstance(token, (int, np.integer)) and 0 <= token < self.model.vocab_size):
                raise InputError(f"stop token {token!r} is not a token id of this model (vocab {self.model.vocab_size})")
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        if stop_strings and self.model.tokenizer is None:
            raise InputError("stop_strings need a bundle with a tokenizer")
        return DecodeSettings(max_new_tokens, min_new_tokens, sampling, frozenset(int(t) for t in stop_token_ids),
                              tuple(stop_strings), logits_processor)

    def requests(
        self,
        prompts: Sequence,
        seed=None,
        num_return_sequences: int = 1,
        segment_ids: Sequence[Sequence[int]] | None = None,
        reply_segment: int | Sequence[int] = 0,
        prefix: Prefix | None = None,
    ) -> list[Request]:
        """One request per prompt and sample, each with its own random generator."""
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
            raise InputError("prompts must be a non-empty list of strings or token-id lists")
        if not isinstance(num_return_sequences, int) or num_return_sequences < 1:
            raise InputError(f"num_return_sequences must be an integer >= 1, got {num_return_sequences!r}")
        encoded = [self.encode_prompt(p) for p in prompts]
        segments = list(segment_ids) if segment_ids is not None else [[0] * len(e) for e in encoded]
        if len(segments) != len(encoded) or any(len(s) != len(e) for s, e in zip(segments, encoded)):
            raise InputError("segment_ids must give one segment id per prompt token")
        replies = [reply_segment] * len(encoded) if isinstance(reply_segment, int) else list(reply_segment)
        seeds = _row_seeds(seed, len(encoded), num_return_sequences)
        base = list(prefix.token_ids) if prefix else []
        tokenizer = self.model.tokenizer
        return [
            Request(i * num_return_sequences + k, ids, segments[i], replies[i],
                    np.random.default_rng(seeds[i * num_return_sequences + k]), base + ids,
                    text_stream=TextStream(tokenizer) if tokenizer is not None else None)
            for i, ids in enumerate(encoded)
            for k in range(num_return_sequences)
        ]

    def stream(self, prompts: Sequence, *, seed=None, num_return_sequences: int = 1, segment_ids=None,
               reply_segment: int | Sequence[int] = 0, prefix: Prefix | None = None, max_active: int | None = None,
               **options) -> Iterator[StreamEvent]:
        """Yield one event per generated token, as soon as it is chosen (see `settings` for the options).

        More prompts than `max_active` (default: all) run by continuous batching: a finished row's slot is
        given to the next waiting prompt.
        """
        settings = self.settings(**options)
        requests = self.requests(prompts, seed, num_return_sequences, segment_ids, reply_segment, prefix)
        slots = min(len(requests), max_active or len(requests))
        if slots > self.max_batch:
            raise InputError(f"batch of {slots} rows exceeds the configured limit of {self.max_batch}")
        start = len(prefix.token_ids) if prefix else 0
        longest = start + max(len(r.tokens) for r in requests)
        if longest >= self.model.max_positions:
            raise InputError(f"prompt of {longest} tokens leaves no room in the model's {self.model.max_positions} positions")
        if prefix is not None:
            capacity = prefix.cache.capacity
        else:
            capacity = min(self.model.max_positions, longest + settings.max_new_tokens)
        batcher = Batcher(self.model, settings, slots, capacity, prefix)
        for request in requests:
            batcher.submit(request)
        while batcher.busy:
            yield from batcher.step()

    def generate(self, prompts: Sequence, **options) -> list[Generation]:
        """Run `stream` to the end (or beam search with num_beams > 1); one `Generation` per prompt and sample."""
        if options.get("num_beams", 1) > 1:
            from .beam import beam_search

            return beam_search(self, prompts, **options)
        options.pop("num_beams", None)
        n = options.get("num_return_sequences", 1)
        results = [Generation(prompt_index=i // n) for i in range(len(prompts) * n)] if prompts else []
        for event in self.stream(prompts, **options):
            result = results[event.row]
            result.token_ids.append(event.token_id)
            result.text += event.text
            if event.finished:
                result.finish_reason = event.finished
        return results

    def prefill(self, prompt, segment_ids: Sequence[int] | None = None, prefix: Prefix | None = None) -> Prefix:
        """Run `prompt` (after `prefix`, if given) and keep its cache for later continuations."""
        ids = self.encode_prompt(prompt)
        start = len(prefix.token_ids) if prefix else 0
        if start + len(ids) >= self.model.max_positions:
            raise InputError(f"{start + len(ids)} tokens leave no room in the model's {self.model.max_positions} positions")
        segments = list(segment_ids) if segment_ids is not None else [0] * len(ids)
        cache = prefix.cache.take([0]) if prefix else KVCache(self.model, 1, self.model.max_positions)
        logits = feed_tokens(self.model, cache, [ids], [segments] if self.model.uses_segments else None)
        base_segments = prefix.segment_ids if prefix else []
        return Prefix((prefix.token_ids if prefix else []) + ids, (base_segments or []) + segments, cache, logits[0])


def _row_seeds(seed, n_prompts: int, n_samples: int) -> list:
    """Per-request seeds: a request draws the same numbers alone or inside any batch."""
    if seed is None:
        base = [int(np.random.SeedSequence().entropy % 2**63)] * n_prompts
    elif isinstance(seed, (int, np.integer)):
        base = [int(seed)] * n_prompts
    else:
        base = [int(s) for s in seed]
        if len(base) != n_prompts:
            raise InputError(f"seed list has {len(base)} entries for {n_prompts} prompts")
    return [[s, k] for s in base for k in range(n_samples)]
