"""The decode loop: ragged batches, greedy or sampled tokens, stop rules, streaming.

`Decoder.stream` is the loop; `Decoder.generate` runs it to the end. One step = one onnxruntime call with IO
binding: token ids in, the last position's logits out, caches kept as OrtValues (see kv_cache.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .kv_cache import KVCache
from .sampling import SamplingOptions, apply_repetition_penalty, choose_tokens

LogitsProcessor = Callable[[int, list[int], np.ndarray], None]


@dataclass
class StreamEvent:
    row: int  # index into the expanded batch (prompt index * num_return_sequences + sample index)
    token_id: int
    text: str  # decoded text added by this token ("" without a tokenizer)
    finished: str | None = None  # finish reason when this is the row's last token


@dataclass
class Generation:
    prompt_index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str = "length"


class Decoder:
    """Generation over a loaded `CausalLM`."""

    def __init__(self, model, max_batch: int = 64) -> None:
        self.model = model
        self.max_batch = max_batch

    # ------------------------------------------------------------------ inputs
    def _encode(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise InputError("empty prompt")
            ids = self.model.encode(prompt)
        else:
            ids = [int(t) for t in np.asarray(prompt).reshape(-1)]
        if not ids:
            raise InputError("empty prompt: it has no tokens")
        if min(ids) < 0 or max(ids) >= self.model.vocab_size:
            raise InputError(f"prompt holds token ids outside [0, {self.model.vocab_size})")
        return ids

    def _stop_ids(self, stop_token_ids: Sequence[int] | None) -> set[int]:
        stops = set(stop_token_ids or [])
        eos = self.model.manifest["special_tokens"].get("eos")
        if stop_token_ids is None and eos is not None:
            stops.add(int(eos))
        for token in stops:
            if not (isinstance(token, (int, np.integer)) and 0 <= token < self.model.vocab_size):
                raise InputError(f"stop token {token!r} is not a token id of this model (vocab {self.model.vocab_size})")
        return stops

    # ------------------------------------------------------------------ the loop
    def stream(
        self,
        prompts: Sequence,
        *,
        max_new_tokens: int = 32,
        min_new_tokens: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int | Sequence[int] | None = None,
        num_return_sequences: int = 1,
        stop_token_ids: Sequence[int] | None = None,
        stop_strings: Sequence[str] = (),
        logits_processor: LogitsProcessor | None = None,
        segment_ids: Sequence[Sequence[int]] | None = None,
        reply_segment: int | Sequence[int] = 0,
    ) -> Iterator[StreamEvent]:
        """Yield one event per generated token per row, as soon as it is chosen."""
        options = SamplingOptions(do_sample, temperature, top_k, top_p, repetition_penalty, None).check()
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if not isinstance(min_new_tokens, int) or not 0 <= min_new_tokens <= max_new_tokens:
            raise InputError(f"min_new_tokens must be an integer in [0, max_new_tokens], got {min_new_tokens!r}")
        if not isinstance(num_return_sequences, int) or num_return_sequences < 1:
            raise InputError(f"num_return_sequences must be an integer >= 1, got {num_return_sequences!r}")
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
            raise InputError("prompts must be a non-empty list of strings or token-id lists")
        encoded = [self._encode(p) for p in prompts]
        rows = [ids for ids in encoded for _ in range(num_return_sequences)]
        if len(rows) > self.max_batch:
            raise InputError(f"batch of {len(rows)} rows exceeds the configured limit of {self.max_batch}")
        longest = max(len(r) for r in rows)
        if longest >= self.model.max_positions:
            raise InputError(f"prompt of {longest} tokens leaves no room in the model's {self.model.max_positions} positions")
        stops = self._stop_ids(stop_token_ids)
        if stop_strings and self.model.tokenizer is None:
            raise InputError("stop_strings need a bundle with a tokenizer")
        seeds = _row_seeds(seed, len(prompts), num_return_sequences)
        rngs = [np.random.default_rng(s) for s in seeds]
        segments = None
        if self.model.uses_segments:
            segs = segment_ids or [[0] * len(ids) for ids in encoded]
            segments = [list(s) for s in segs for _ in range(num_return_sequences)]
            replies = [reply_segment] * len(prompts) if isinstance(reply_segment, int) else list(reply_segment)
            reply = np.array([r for r in replies for _ in range(num_return_sequences)], dtype=np.int64)

        steps = min(max_new_tokens, self.model.max_positions - longest)
        yield from self._loop(rows, segments, reply if segments else None, steps, min_new_tokens, options, rngs,
                              stops, list(stop_strings), logits_processor)

    def _loop(self, rows, segments, reply, steps, min_new, options, rngs, stops, stop_strings, processor):
        model, batch = self.model, len(rows)
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        width = int(lengths.max())
        left = not model.shared_cache  # concat caches are left-padded, shared buffers right-padded
        ids = np.zeros((batch, width), dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        types = np.zeros((batch, width), dtype=np.int64) if segments is not None else None
        for b, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[b, span], mask[b, span] = row, 1
            if types is not None:
                types[b, span] = segments[b]
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        last = np.full(batch, width - 1) if left else lengths - 1
        cache = KVCache(model, batch, capacity=width + steps)
        generated = [[] for _ in range(batch)]
        texts = [""] * batch
        done = np.zeros(batch, dtype=bool)
        stop_list = np.array(sorted(stops), dtype=np.int64)

        for step in range(steps):
            logits = model.run_step(ids, positions, mask, last[:, None], types, cache)[:, 0]
            if options.repetition_penalty != 1.0:
                seen = [np.asarray(r + g, dtype=np.int64) for r, g in zip(rows, generated)]
                apply_repetition_penalty(logits, seen, options.repetition_penalty)
            if step < min_new and stop_list.size:
                logits[:, stop_list] = -np.inf
            if processor is not None:
                for b in np.flatnonzero(~done):
                    processor(int(b), generated[b], logits[b])
            tokens = choose_tokens(logits, options, rngs)
            for b in np.flatnonzero(~done):
                token = int(tokens[b])
                generated[b].append(token)
                delta = ""
                if model.tokenizer is not None:
                    text = model.decode(generated[b])
                    delta, texts[b] = text[len(texts[b]):], text
                reason = None
                if token in stops:
                    reason = "stop_token"
                elif any(s in texts[b] for s in stop_strings):
                    reason = "stop_string"
                elif step == steps - 1:
                    reason = "length"
                done[b] = reason is not None
                yield StreamEvent(int(b), token, delta, reason)
            if done.all():
                return
            # next step: one token per row (finished rows repeat theirs; their output is ignored)
            ids = tokens[:, None].astype(np.int64)
            positions = lengths[:, None].copy()
            lengths = lengths + 1
            if left:
                mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
                last = np.zeros(batch, dtype=np.int64)
            else:
                mask = (np.arange(int(lengths.max()))[None] < lengths[:, None]).astype(np.int64)
                last = np.zeros(batch, dtype=np.int64)
            if types is not None:
                types = reply[:, None]

    def generate(self, prompts: Sequence, **options) -> list[Generation]:
        """Run `stream` to the end; one `Generation` per prompt and sample, in order."""
        n = options.get("num_return_sequences", 1)
        results = None
        for event in self.stream(prompts, **options):
            if results is None:
                results = [Generation(prompt_index=i // n) for i in range(len(prompts) * n)]
            result = results[event.row]
            result.token_ids.append(event.token_id)
            result.text += event.text
            if event.finished:
                result.finish_reason = event.finished
        return results or []


def _row_seeds(seed, n_prompts: int, n_samples: int) -> list:
    """Per-row seeds: a row draws the same numbers alone or inside any batch."""
    if seed is None:
        base = [int(np.random.SeedSequence().entropy % 2**63)] * n_prompts
    elif isinstance(seed, (int, np.integer)):
        base = [int(seed)] * n_prompts
    else:
        base = [int(s) for s in seed]
        if len(base) != n_prompts:
            raise InputError(f"seed list has {len(base)} entries for {n_prompts} prompts")
    return [[s, k] for s in base for k in range(n_samples)]
