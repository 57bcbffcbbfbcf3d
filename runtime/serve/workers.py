"""One worker per served bundle, bridging the HTTP event loop and the model.

- `DecoderWorker`: an `Engine` whose loop thread batches every request on the bundle (continuous batching
  across HTTP requests); each request's events come back to the event loop through an asyncio queue.
- `QaWorker`: micro-batching; requests that arrive within `max_wait_ms` of each other (up to a token budget)
  are answered in one `Reader.answer` call on a worker thread.
- `XiangqiWorker`: one move scorer shared by all requests, one request at a time on a worker thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from ..errors import InputError
from ..lm import Request, StreamEvent
from ..lm.generate import encode_prompt
from .metrics import Metrics


class RequestTimeout(InputError):
    """A request ran past the server's per-request timeout (it was cancelled)."""


class DecoderWorker:
    def __init__(self, name: str, model, slots: int, max_queue: int, metrics: Metrics, speculate: int = 0,
                 draft=None) -> None:
        self.name, self.model, self.metrics = name, model, metrics
        self.engine = model.engine(slots=slots, max_queue=max_queue, speculate=speculate, draft=draft)
        self.engine.on_step = lambda rows: metrics.batch_size.labels(name).observe(rows)
        self.engine.on_draft = self._count_draft
        self.engine.start()

    def _count_draft(self, drafted: int, accepted: int) -> None:
        self.metrics.draft_tokens.labels(self.name).inc(drafted)
        self.metrics.accepted_draft_tokens.labels(self.name).inc(accepted)

    def encode(self, prompt) -> list[int]:
        return encode_prompt(self.model, prompt)

    def submit(self, request: Request, timeout: float) -> Run:
        """Queue `request` now (a full queue raises QueueFull here, before any response is started)."""
        run = Run(self, request, timeout)
        self._observe_queue()
        return run

    def _observe_queue(self) -> None:
        self.metrics.queue_depth.labels(self.name).set(self.engine.waiting)
        self.metrics.active_slots.labels(self.name).set(self.engine.active)

    def close(self) -> None:
        self.engine.stop(drain=True, timeout=30)


class Run:
    """One submitted request as the event loop sees it: `await next()` gives its events, None after the last."""

    def __init__(self, worker: DecoderWorker, request: Request, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self.worker, self._events = worker, asyncio.Queue()
        self.handle = worker.engine.submit(request, sink=lambda e: loop.call_soon_threadsafe(self._events.put_nowait, e))
        self._deadline, self._timeout = loop.time() + timeout, timeout
        self._start, self._last, self._over = time.perf_counter(), None, False

    async def next(self) -> StreamEvent | None:
        if self._over:
            return None
        loop = asyncio.get_running_loop()
        try:
            event = await asyncio.wait_for(self._events.get(), max(0.0, self._deadline - loop.time()))
        except TimeoutError:
            self.cancel()
            raise RequestTimeout(f"the request ran past the server's {self._timeout:g} s timeout") from None
        metrics, name = self.worker.metrics, self.worker.name
        if event.token_id is not None:
            now = time.perf_counter()
            (metrics.ttft if self._last is None else metrics.inter_token).labels(name).observe(
                now - (self._start if self._last is None else self._last))
            self._last = now
            metrics.tokens.labels(name).inc()
        if event.finished:
            self._over = True
            self.worker._observe_queue()
            if event.finished == "error":
                raise self.handle.error
        return event

    def cancel(self) -> None:
        """Free the request's slot at the engine's next round (a client gone, a timeout); safe to repeat."""
        if not self.handle.done.is_set():
            self.handle.cancel()


@dataclass
class _QaJob:
    question: str
    passages: list[str]
    top_k: int
    units: int
    future: asyncio.Future


class QaWorker:
    def __init__(self, name: str, reader, max_wait_ms: float, batch_units: int) -> None:
        self.name, self.reader = name, reader
        self.max_wait, self.batch_units = max_wait_ms / 1e3, batch_units
        self._jobs: asyncio.Queue[_QaJob] | None = None
        self._task: asyncio.Task | None = None
        self._lock = threading.Lock()

    async def answer(self, question: str, passages: list[str], top_k: int) -> list:
        if self._jobs is None:  # made on first use, inside the server's event loop
            self._jobs = asyncio.Queue()
            self._task = asyncio.create_task(self._batches())
        future = asyncio.get_running_loop().create_future()
        await self._jobs.put(_QaJob(question, passages, top_k, len(question) + sum(map(len, passages)), future))
        return await future

    async def _batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._jobs.get()]
            units, deadline = jobs[0].units, loop.time() + self.max_wait
            while units < self.batch_units:
                try:
                    job = await asyncio.wait_for(self._jobs.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
                jobs.append(job)
                units += job.units
            for top_k in {j.top_k for j in jobs}:  # one call per top_k asked for
                group = [j for j in jobs if j.top_k == top_k]
                try:
                    answers = await asyncio.to_thread(self._answer, group, top_k)
                except InputError:  # one bad item must not fail the others: answer them alone
                    answers = [await asyncio.to_thread(self._answer_or_error, j, top_k) for j in group]
                for job, result in zip(group, answers):
                    if not job.future.done():
                        (job.future.set_exception if isinstance(result, Exception) else job.future.set_result)(result)

    def _answer(self, jobs: list[_QaJob], top_k: int) -> list:
        with self._lock:
            return self.reader.answer([j.question for j in jobs], passages=[j.passages for j in jobs], top_k=top_k)

    def _answer_or_error(self, job: _QaJob, top_k: int):
        try:
            return self._answer([job], top_k)[0]
        except InputError as exc:
            return exc

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class XiangqiWorker:
    def __init__(self, name: str, model) -> None:
        from ..xiangqi.mover import MoveModel

        self.name, self.mover = name, MoveModel(model)
        self._lock = threading.Lock()

    async def move(self, moves: list[str], fen: str | None, top: int, search: bool = False) -> dict:
        return await asyncio.to_thread(self._move, moves, fen, top, search)

    def _move(self, moves: list[str], fen: str | None, top: int, search: bool) -> dict:
        from ..xiangqi import Board
        from ..xiangqi.search import choose_by_search

        board = Board.from_moves(moves, fen=fen)
        with self._lock:
            scored = self.mover.score(board)
        chosen = choose_by_search(board, scored) if search else scored[0]
        return {"move": chosen.move, "fen": board.fen(), "legal_moves": len(scored),
                "top": [{"move": s.move, "probability": s.probability, "logprob": s.logprob} for s in scored[:top]]}

    def close(self) -> None:
        pass
