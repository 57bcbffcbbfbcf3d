"""The request-level decode engine: continuous batching over a fixed number of cache slots.

An `Engine` owns `slots` rows of KV cache of one capacity. `submit(request)` queues a request from any thread
and returns its `Handle`; `cancel(handle)` frees its slot at the next round. Each round (`step`) either admits
waiting requests into free slots (their prefill gives their first tokens, so time to first token is one prefill
call) or runs one decode step for every running request in one onnxruntime call. A finished or cancelled
request's slot is freed at once and never advanced again, so an idle row cannot grow past the cache's capacity.

Two ways to drive it: call `step()` yourself (what `generate`/`stream` do), or `start()` a loop thread that
steps while there is work and hands each event to its request's sink (what a server does).
"""

from __future__ import annotations

import functools
import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import EdgeInferError, InputError
from .cache import KVCache
from .draft import Draft, DraftModel, prompt_lookup
from .options import DecodeOptions, is_int
from .sampling import (
    accept_draft,
    apply_repetition_penalty,
    choose_tokens,
    probabilities,
)
from .step import Step
from .text_stream import TextStream
from .types import Prefix, StreamEvent

MAX_SLOTS = 1024  # cache rows of one engine: far beyond what pays on any machine, far below what exhausts memory
MAX_SPECULATE = 16  # most draft tokens a row verifies in one step
# after k wholly rejected drafts in a row a request drafts nothing for min(2**k, 16) - 1 steps, then only PROBE_DRAFT
# tokens until a draft is accepted again: drafting turns itself off where the text does not repeat, and comes back when
# it starts to (benchmarks/speculative.py "misses": 0.98x -> 1.00x plain for GPT-2-small, 0.88x -> 0.91x for the chat
# bundle, where a verify call of 7 tokens costs about two steps)
MAX_DRAFT_COOLDOWN = 16
PROBE_DRAFT = 2
# most prompt tokens admitted in one round, and padded tokens in one group prefill call: a round of 512 tokens of
# GPT-2-small runs the MatMuls about as efficiently as 2048 (M = 512 rows), and hands out first tokens 4x sooner
PREFILL_TOKENS = 512
PREFILL_PADDING = 1.25  # a group's padded tokens may exceed its real tokens by at most this factor


def check_whole_prefix(model, start: int, length: int) -> None:
    """A prefix LM's first tokens see each other both ways, so they must come in one prompt, before any other."""
    prefix = model.bidirectional_prefix
    if prefix and start < prefix and (start > 0 or length < prefix):
        raise InputError(f"this model reads its first {prefix} tokens together (a bidirectional prefix): a prompt "
                         f"must hold all of them at once, got {length} after {start}")


def prefill_groups(lengths: list[int | None]) -> list[list[int]]:
    """Indices of requests to prefill together: similar prompt lengths (little padding), bounded tokens per call.

    A None length (a request continuing a kept prefix) is prefilled alone.
    """
    groups = [[i] for i, n in enumerate(lengths) if n is None]
    group: list[int] = []
    for i in sorted((i for i, n in enumerate(lengths) if n is not None), key=lambda i: lengths[i]):
        members = [*group, i]
        padded = len(members) * lengths[i]  # sorted: this one is the longest so far
        if group and (padded > PREFILL_TOKENS or padded > PREFILL_PADDING * sum(lengths[j] for j in members)):
            groups.append(group)
            members = [i]
        group = members
    return groups + ([group] if group else [])


class QueueFull(EdgeInferError):
    """The engine's waiting queue is at its bound: try again later."""


@dataclass
class Request:
    """One sequence to continue: the tokens to feed, after an optional kept prefix, and how to decode them."""

    tokens: list[int]
    options: DecodeOptions
    segments: list[int] | None = None  # one per token (bundles with segment embeddings)
    reply_segment: int = 0  # the segment id of generated tokens
    prefix: Prefix | None = None
    seed: object = None  # anything numpy's default_rng takes; None draws fresh entropy


class Handle:
    """A submitted request: its id, its tokens so far, how it ended, and (with the default sink) its events."""

    def __init__(self, engine: Engine, request_id: int, request: Request,
                 sink: Callable[[StreamEvent], None] | None) -> None:
        self.engine, self.id, self.request = engine, request_id, request
        self.generated: list[int] = []
        self.finish_reason: str | None = None
        self.error: Exception | None = None
        self.cancel_requested = False
        self._queue: queue.SimpleQueue | None = None
        if sink is None:
            self._queue = queue.SimpleQueue()
            sink = self._queue.put
        self.sink = sink
        self.done = threading.Event()
        # decoding state, touched only by the thread that steps the engine
        self.history = [*(request.prefix.token_ids if request.prefix else []), *request.tokens]
        tokenizer = engine.model.tokenizer
        self.text_stream = TextStream(tokenizer) if tokenizer is not None else None
        self.draft_cooldown = 0  # steps left without drafting
        self.draft_misses = 0  # wholly rejected drafts in a row

    @functools.cached_property
    def rng(self) -> np.random.Generator:
        """Made at the first sampled token: greedy requests never import numpy.random (7 ms of a cold start)."""
        return np.random.default_rng(self.request.seed)

    def cancel(self) -> None:
        self.engine.cancel(self)

    def events(self, timeout: float | None = None) -> Iterator[StreamEvent]:
        """The request's events as the engine's loop thread makes them (default sink only)."""
        if self._queue is None:
            raise InputError("this handle's events go to the sink it was submitted with")
        while True:
            event = self._queue.get(timeout=timeout)
            yield event
            if event.finished:
                return


class Engine:
    """`slots` rows of KV cache of `capacity` tokens, at most `max_queue` requests waiting; with `speculate` > 0,
    each decode step also verifies up to that many draft tokens per request, drafted by prompt lookup or by a
    `draft` model (a smaller bundle with the same tokenizer, `DraftModel`): greedy output is unchanged, sampled
    output keeps its distribution (speculative sampling's acceptance rule)."""

    def __init__(self, model, slots: int, capacity: int | None = None, max_queue: int | None = None,
                 speculate: int = 0, draft=None) -> None:
        if not (is_int(slots) and 1 <= slots <= MAX_SLOTS):
            raise InputError(f"slots must be an integer in [1, {MAX_SLOTS}], got {slots!r}")
        if capacity is not None and not (is_int(capacity) and capacity >= 1):
            raise InputError(f"capacity must be an integer >= 1, got {capacity!r}")
        if max_queue is not None and not (is_int(max_queue) and max_queue >= 0):
            raise InputError(f"max_queue must be an integer >= 0, got {max_queue!r}")
        if not (is_int(speculate) and 0 <= speculate <= MAX_SPECULATE):
            raise InputError(f"speculate must be an integer in [0, {MAX_SPECULATE}], got {speculate!r}")
        if draft is not None and not speculate:
            raise InputError("a draft model needs speculate >= 1: the number of draft tokens verified per step")
        self.speculate = int(speculate)
        self.model = model
        self.capacity = capacity or model.max_positions
        self._drafter = DraftModel(draft, model, slots, self.capacity) if draft is not None else None
        self.max_queue = max_queue
        self.cache = KVCache(model, slots, self.capacity)
        self._step = Step(model, self.cache)
        self._row_steps: dict[int, tuple[KVCache, Step]] = {}  # speculative steps of one row of a shared buffer
        self._slots: list[Handle | None] = [None] * slots
        self._waiting: deque[Handle] = deque()
        self._ids = itertools.count()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cancels = 0  # cancellations not yet handled by a round
        self.on_step: Callable[[int], None] | None = None  # called with the rows of each decode step (metrics)
        self.on_draft: Callable[[int, int], None] | None = None  # with each draft's tokens and those accepted (metrics)

    # ------------------------------------------------------------------ any thread
    def submit(self, request: Request, sink: Callable[[StreamEvent], None] | None = None) -> Handle:
        """Queue a request; it joins the batch at the next round with a free slot."""
        start = len(request.prefix.token_ids) if request.prefix else 0
        total = start + len(request.tokens)
        if not request.tokens:
            raise InputError("a request needs at least one token to feed")
        if total >= self.capacity:
            raise InputError(f"prompt of {total} tokens leaves no room in the engine's {self.capacity} positions")
        check_whole_prefix(self.model, start, len(request.tokens))
        with self._lock:
            if self._stopping:
                raise QueueFull("the engine is shutting down")
            if self.max_queue is not None and len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are waiting, the queue's bound")
            handle = Handle(self, next(self._ids), request, sink)
            if request.options.sampling.do_sample:
                handle.rng  # noqa: B018  made here, so a seed numpy refuses raises in the caller's thread
            self._waiting.append(handle)
            self._lock.notify()
        return handle

    def cancel(self, handle: Handle) -> None:
        """Stop a request: its slot is freed (or it leaves the queue) at the next round."""
        with self._lock:
            handle.cancel_requested = True
            self._cancels += 1
            self._lock.notify()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return sum(h is not None for h in self._slots)

    @property
    def busy(self) -> bool:
        return bool(self._waiting) or any(h is not None for h in self._slots)

    # ------------------------------------------------------------------ the loop thread
    def start(self) -> None:
        """Run rounds on a daemon thread while there is work; events go to each request's sink. The cache's memory
        is committed first, so the first requests do not pay for it (`KVCache.commit_memory`), and the weights move
        into huge pages, which a long-lived loop earns back (`CausalLM.use_huge_pages`)."""
        if self._thread is None:
            self.cache.commit_memory()
            self.model.use_huge_pages()
            self._thread = threading.Thread(target=self._loop, name="edgeinfer-engine", daemon=True)
            self._thread.start()

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop the loop thread: after the requests in flight are done (drain), or cancelling them."""
        with self._lock:
            self._stopping = True
            if not drain:
                for handle in [*self._waiting, *filter(None, self._slots)]:
                    handle.cancel_requested = True
                    self._cancels += 1
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self.busy and not self._stopping:
                    self._lock.wait()
                if not self.busy:
                    return
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001  a failed step fails the requests in it; the engine goes on
                self._fail_all(exc)

    def _fail_all(self, exc: Exception) -> None:
        for slot, handle in enumerate(self._slots):
            if handle is not None:
                self._finish(slot, handle, "error", error=exc)

    # ------------------------------------------------------------------ one round
    def step(self) -> list[StreamEvent]:
        """Admit waiting requests into free slots, or else run one decode step for the running ones.

        A round that admits returns at once, so first tokens come out right after the prefill; the rows already
        running wait one round, which changes no token.
        """
        events = self._drop_cancelled()
        admitted = self._take_waiting()
        if admitted:
            return events + self._admit(admitted)
        running = [slot for slot, h in enumerate(self._slots) if h is not None]
        if not running:
            return events
        last = np.zeros(len(self._slots), dtype=np.int64)
        active = np.zeros(len(self._slots), dtype=bool)
        segments = np.zeros(len(self._slots), dtype=np.int64) if self.model.uses_segments else None
        for slot in running:
            handle = self._slots[slot]
            last[slot], active[slot] = handle.generated[-1], True
            if segments is not None:
                segments[slot] = handle.request.reply_segment
        # a host shared buffer steps only the rows up to the last running one (slots fill from the lowest)
        rows = running[-1] + 1 if self.cache.can_view_rows else len(self._slots)
        # onnxruntime's GroupQueryAttention takes a run of tokens over a past for one row only: a shared buffer
        # verifies drafts when one request runs (the case speculation speeds up most), a concat cache at any batch
        speculating = self.speculate and (not self.cache.shared or (len(running) == 1 and self.cache.can_view_rows))
        drafts = self._drafts(running) if speculating else {}
        if any(draft.tokens for draft in drafts.values()):
            return events + self._speculative_step(running, drafts, rows, segments)
        logits = self._step.decode(last[:rows], None if segments is None else segments[:rows], active[:rows])
        if self.on_step is not None:
            self.on_step(len(running))
        return events + self._choose(running, logits if len(running) == len(logits) else logits[running])

    def _drop_cancelled(self) -> list[StreamEvent]:
        if not self._cancels:
            return []
        with self._lock:
            self._cancels = 0
            gone = [h for h in self._waiting if h.cancel_requested]
            for handle in gone:
                self._waiting.remove(handle)
        events = [self._finish(None, h, "cancelled") for h in gone]
        for slot, handle in enumerate(self._slots):
            if handle is not None and handle.cancel_requested:
                events.append(self._finish(slot, handle, "cancelled"))
        return events

    def _take_waiting(self) -> list[int]:
        """Move waiting requests into free slots, up to PREFILL_TOKENS prompt tokens a round (at least one request):
        a burst of arrivals is prefilled over several rounds, each handing out its first tokens as soon as it ends."""
        if not self._waiting:
            return []
        admitted, budget = [], PREFILL_TOKENS
        with self._lock:
            for slot, handle in enumerate(self._slots):
                if handle is None and self._waiting:
                    tokens = len(self._waiting[0].request.tokens)
                    if admitted and tokens > budget:
                        break
                    budget -= tokens
                    self._slots[slot] = self._waiting.popleft()
                    admitted.append(slot)
        return admitted

    def _admit(self, slots: list[int]) -> list[StreamEvent]:
        handles = [self._slots[s] for s in slots]
        try:
            if len(slots) == len(self._slots) and not any(h.request.prefix for h in handles):
                self.cache.lengths[:] = 0  # the whole batch starts fresh: one batched prefill
                logits = self._step.feed([h.request.tokens for h in handles], self._segments(handles))
            else:
                logits = np.empty((len(slots), self.model.vocab_size), dtype=np.float32)
                for group in prefill_groups([len(h.request.tokens) if h.request.prefix is None else None
                                             for h in handles]):
                    logits[group] = self._prefill_group([slots[i] for i in group])
        except Exception as exc:  # noqa: BLE001  only the requests admitted fail; their events carry the error
            return [self._finish(slot, handle, "error", error=exc) for slot, handle in zip(slots, handles)]
        return self._choose(slots, logits)

    def _prefill_group(self, slots: list[int]) -> np.ndarray:
        """Prefill requests without a prefix in one call: straight into their slots when they are consecutive rows of a
        host shared buffer (as a burst of arrivals fills them), else on a cache of their own, then copied.

        One call for k prompts reads the weights once instead of k times: the lever when requests arrive while
        others run, as under a server's load.
        """
        if len(slots) == 1:
            return self._prefill_slot(slots[0])[None]
        rows = sorted(slots)
        if self.cache.can_view_rows and rows == list(range(rows[0], rows[0] + len(rows))):
            handles = [self._slots[s] for s in rows]
            self.cache.lengths[rows] = 0
            view = self.cache.row_view(rows[0], len(rows))
            logits = Step(self.model, view).feed([h.request.tokens for h in handles], self._segments(handles))
            self.cache.lengths[rows] = view.lengths
            return logits[[rows.index(s) for s in slots]]
        handles = [self._slots[s] for s in slots]
        tokens = [h.request.tokens for h in handles]
        group = KVCache(self.model, len(slots), max(len(t) for t in tokens))
        logits = Step(self.model, group).feed(tokens, self._segments(handles))
        for row, slot in enumerate(slots):
            self.cache.insert(slot, group, source_row=row)
        return logits

    def _prefill_slot(self, slot: int) -> np.ndarray:
        """Prefill one request into its slot: in place (host shared buffer), or in a one-row cache then copied."""
        handle = self._slots[slot]
        request = handle.request
        segments = self._segments([handle])
        if self.cache.can_view_rows:
            if request.prefix is not None:
                self.cache.insert(slot, request.prefix.cache)
            else:
                self.cache.lengths[slot] = 0
            view = self.cache.row_view(slot)  # writes straight into the batch's buffer
            logits = Step(self.model, view).feed([request.tokens], segments)
            self.cache.lengths[slot] = view.lengths[0]
            return logits[0].copy()
        if request.prefix is not None:
            single = request.prefix.cache.take([0], capacity=self.capacity)
        else:
            single = KVCache(self.model, 1, self.capacity)
        logits = Step(self.model, single).feed([request.tokens], segments)
        self.cache.insert(slot, single)
        return logits[0].copy()

    def _segments(self, handles: list[Handle]) -> list[list[int]] | None:
        if not self.model.uses_segments:
            return None
        return [h.request.segments or [0] * len(h.request.tokens) for h in handles]

    # ------------------------------------------------------------------ speculative steps
    def _draft_room(self, handle: Handle) -> int:
        """How many draft tokens a running request may have this step: none while it waits out a cooldown, else as
        many as its remaining tokens and the caches allow."""
        if handle.draft_cooldown:
            handle.draft_cooldown -= 1
            return 0
        room = min(PROBE_DRAFT if handle.draft_misses else self.speculate, self.capacity - len(handle.history) - 1,
                   handle.request.options.max_new_tokens - len(handle.generated) - 1)
        return room if self._drafter is None else min(room, self._drafter.room(len(handle.history)))

    def _drafts(self, running: list[int]) -> dict[int, Draft]:
        """Each running request's draft: prompt lookup, or one round of the draft model for all that have room."""
        rooms = {slot: self._draft_room(self._slots[slot]) for slot in running}
        drafts = {slot: Draft([]) for slot in running}
        if self._drafter is None:
            drafts |= {slot: Draft(prompt_lookup(self._slots[slot].history, room))
                       for slot, room in rooms.items() if room > 0}
        elif any(room > 0 for room in rooms.values()):
            wanted = {slot: (self._slots[slot], room) for slot, room in rooms.items() if room > 0}
            drafts |= self._drafter.propose(wanted)
        return drafts

    def _speculative_step(self, running: list[int], drafts: dict[int, Draft], rows: int,
                          segments: np.ndarray | None) -> list[StreamEvent]:
        """One call feeds each running request its last token and its drafts; each keeps what it accepts."""
        runs = [[0]] * rows  # idle rows are fed a filler token and keep nothing
        active = np.zeros(rows, dtype=bool)
        for slot in running:
            runs[slot], active[slot] = [self._slots[slot].generated[-1], *drafts[slot].tokens], True
        if self.cache.shared:  # one running request: verify on a view of its row
            (slot,) = running
            view, step = self._row_step(slot)
            view.lengths[0] = self.cache.lengths[slot]
            row_logits = step.verify([runs[slot]], None if segments is None else segments[slot : slot + 1],
                                     active[slot : slot + 1])
            self.cache.lengths[slot] = view.lengths[0]
            logits = {slot: row_logits[0]}
        else:
            logits = self._step.verify(runs, None if segments is None else segments[:rows], active)
        if self.on_step is not None:
            self.on_step(len(running))
        events: list[StreamEvent] = []
        for slot in running:
            handle, draft = self._slots[slot], drafts[slot]
            emitted = self._accept(slot, logits[slot], draft, events)
            accepted = max(emitted - 1, 0)  # the last token emitted is the main model's own
            if draft.tokens and self.on_draft is not None:
                self.on_draft(len(draft.tokens), accepted)
            if self._slots[slot] is handle:  # still running: forget the drafts it did not accept
                self.cache.rollback(slot, len(draft.tokens) + 1 - emitted)
                if self._drafter is not None:
                    self._drafter.keep(slot, accepted)
                if draft.tokens:
                    handle.draft_misses = handle.draft_misses + 1 if emitted == 1 else 0
                    handle.draft_cooldown = min(2**handle.draft_misses, MAX_DRAFT_COOLDOWN) - 1
        return events

    def _row_step(self, slot: int) -> tuple[KVCache, Step]:
        """A one-row view of a host shared buffer and its step, bound once per slot (the memory never moves)."""
        if slot not in self._row_steps:
            view = self.cache.row_view(slot)
            self._row_steps[slot] = (view, Step(self.model, view))
        return self._row_steps[slot]

    def _accept(self, slot: int, logits: np.ndarray, draft: Draft, events: list[StreamEvent]) -> int:
        """Choose tokens after each fed position in turn while they agree with the draft; the number emitted."""
        handle = self._slots[slot]
        sampling = handle.request.options.sampling
        for j in range(len(draft.tokens) + 1):
            if not self._prepared(slot, handle, logits[j], events):
                return j
            proposed = draft.tokens[j] if j < len(draft.tokens) else None
            if proposed is not None and sampling.do_sample:
                token = accept_draft(probabilities(logits[j : j + 1], sampling)[0], proposed, handle.rng,
                                     None if draft.probs is None else draft.probs[j])
            else:
                token = int(choose_tokens(logits[j : j + 1], sampling, [handle.rng] if sampling.do_sample else [])[0])
            events.append(self._emit(slot, token))
            if self._slots[slot] is not handle or token != proposed:
                return j + 1
        return len(draft.tokens) + 1

    # ------------------------------------------------------------------ choosing tokens
    def _prepared(self, slot: int, handle: Handle, logits: np.ndarray, events: list[StreamEvent]) -> bool:
        """Apply the request's rules to its logits; if its own hook or logits fail, only it ends (False)."""
        try:
            self._prepare(handle, logits)
        except Exception as exc:  # noqa: BLE001  a request's own hook or logits: only it fails
            if not isinstance(exc, EdgeInferError):  # the caller's hook raised: say so in the project's terms
                error = InputError(f"request {handle.id}: logits_processor raised {type(exc).__name__}: {exc}")
                error.__cause__, exc = exc, error
            events.append(self._finish(slot, handle, "error", error=exc))
            return False
        return True

    def _choose(self, slots: list[int], logits: np.ndarray) -> list[StreamEvent]:
        """Apply each request's rules to its row of logits, then pick tokens, rows with equal sampling together."""
        events, groups = [], {}
        for row, slot in enumerate(slots):
            handle = self._slots[slot]
            if self._prepared(slot, handle, logits[row], events):
                groups.setdefault(handle.request.options.sampling, []).append((row, slot))
        for sampling, members in groups.items():
            rows = [row for row, _ in members]
            chosen = logits if len(rows) == len(logits) else logits[rows]  # (rows are in order: no copy for one group)
            rngs = [self._slots[slot].rng for _, slot in members] if sampling.do_sample else []  # greedy draws nothing
            tokens = choose_tokens(chosen, sampling, rngs)
            events += [self._emit(slot, int(token)) for (_, slot), token in zip(members, tokens)]
        return events

    @staticmethod
    def _prepare(handle: Handle, logits: np.ndarray) -> None:
        options = handle.request.options
        if options.sampling.repetition_penalty != 1.0:
            apply_repetition_penalty(logits[None], [np.asarray(handle.history, dtype=np.int64)],
                                     options.sampling.repetition_penalty)
        if options.stop_token_ids and len(handle.generated) < options.min_new_tokens:
            logits[list(options.stop_token_ids)] = -np.inf
        if options.logits_processor is not None:
            options.logits_processor(handle.id, handle.generated, logits)
            if not np.isfinite(logits.max()):  # nan anywhere, or every token banned
                raise InputError(f"request {handle.id}: no finite logits left to choose a token from")

    def _emit(self, slot: int, token: int) -> StreamEvent:
        handle = self._slots[slot]
        options = handle.request.options
        handle.generated.append(token)
        handle.history.append(token)
        stream = handle.text_stream
        delta = stream.push(token) if stream is not None else ""
        reason = None
        if token in options.stop_token_ids:
            reason = "stop_token"
        elif delta and any(s in stream.text for s in options.stop_strings):
            reason = "stop_string"
        elif len(handle.generated) >= options.max_new_tokens or len(handle.history) >= self.capacity:
            reason = "length"
        if reason is None:
            event = StreamEvent(handle.id, token, delta)
            handle.sink(event)
            return event
        return self._finish(slot, handle, reason, token, delta)

    def _finish(self, slot: int | None, handle: Handle, reason: str, token: int | None = None, delta: str = "",
                error: Exception | None = None) -> StreamEvent:
        """End a request: free its slot and send its last event."""
        if slot is not None:
            self._slots[slot] = None
            self.cache.free(slot)
            if self._drafter is not None:
                self._drafter.free(slot)
        if handle.text_stream is not None and reason != "error":
            delta += handle.text_stream.flush()
        handle.finish_reason, handle.error = reason, error
        event = StreamEvent(handle.id, token, delta, reason)
        handle.sink(event)
        handle.done.set()
        return event
