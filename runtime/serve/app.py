"""The ASGI app (FastAPI): OpenAI-compatible completions over every decoder bundle, QA, Xiangqi, health, metrics.

Errors come back as OpenAI-style bodies `{"error": {"message", "type", "param", "code"}}`: 400 for any bad request
(malformed JSON, wrong types, out-of-range options, a prompt longer than the context), 404 for an unknown model,
408 when a request runs past the per-request timeout, 429 with Retry-After when a model's queue is full.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..chat import TidyStream, encode_dialogue, reply_segment_id, tidy
from ..errors import BundleError, EdgeInferError, InputError
from ..lm import QueueFull, Request, decode_options
from ..lm.draft import check_draft_model
from ..loader import load
from .metrics import Metrics
from .schemas import ChatRequest, CompletionRequest, MoveRequest, QaItem, Sampling
from .workers import DecoderWorker, QaWorker, RequestTimeout, XiangqiWorker

FINISH = {"stop_token": "stop", "stop_string": "stop", "length": "length", "cancelled": "stop"}


@dataclass
class ServeConfig:
    models: dict[str, str]  # name -> bundle folder
    max_active: int = 16  # slots per decoder bundle
    max_queue: int = 64  # waiting requests per decoder bundle beyond which requests get 429
    speculate: int = 0  # draft tokens verified per decode step (see edgeinfer.lm.Engine)
    drafts: dict[str, str] = field(default_factory=dict)  # served model name -> draft bundle (else prompt lookup)
    threads: int | None = None
    device: str = "auto"
    timeout_s: float = 300.0
    qa_max_wait_ms: float = 5.0
    qa_batch_chars: int = 20_000

    def __post_init__(self) -> None:
        unknown = sorted(set(self.drafts) - set(self.models))
        if unknown:
            raise InputError(f"--draft {unknown[0]}: no model of that name is served")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


def _error(status: int, message: str, param: str | None, kind: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(config: ServeConfig, loaded: tuple[dict, dict] | None = None) -> FastAPI:
    """The app over `config.models`; bundles already opened (`load_models`: the models and their drafts) are passed
    in `loaded` and not re-read."""
    metrics = Metrics()
    workers: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        models, drafts = loaded if loaded is not None else load_models(config)
        for name, model in models.items():
            task = model.manifest["task"]
            if task == "extractive-qa":
                workers[name] = QaWorker(name, model, config.qa_max_wait_ms, config.qa_batch_chars)
            elif task == "xiangqi":
                workers[name] = XiangqiWorker(name, model)
            else:
                workers[name] = DecoderWorker(name, model, config.max_active, config.max_queue, metrics,
                                              config.speculate, drafts.get(name))
        yield
        for worker in workers.values():
            worker.close()  # decoders finish the requests in flight first

    app = FastAPI(title="edgeinfer", lifespan=lifespan)

    def worker_for(name: str | None, kind: type):
        if name is None:
            found = [w for w in workers.values() if isinstance(w, kind)]
            if not found:
                raise ApiError(404, f"no {kind.__name__.removesuffix('Worker').lower()} model is served", "model")
            return found[0]
        worker = workers.get(name)
        if worker is None:
            raise ApiError(404, f"model {name!r} is not served here (served: {', '.join(workers)})", "model",
                           "not_found_error")
        if not isinstance(worker, kind):
            raise ApiError(400, f"model {name!r} does not do this task", "model")
        return worker

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        metrics.requests.labels(request.url.path, str(exc.status)).inc()
        return _error(exc.status, exc.message, exc.param, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        metrics.requests.labels(request.url.path, "400").inc()
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON: {first.get('msg')}", None, "invalid_request_error")
        return _error(400, f"{'.'.join(where) or 'body'}: {first.get('msg')}", ".".join(where) or None,
                      "invalid_request_error")

    @app.exception_handler(QueueFull)
    async def queue_full(request, exc: QueueFull):
        metrics.requests.labels(request.url.path, "429").inc()
        return _error(429, str(exc), None, "rate_limit_error", {"Retry-After": "1"})

    @app.exception_handler(RequestTimeout)
    async def timed_out(request, exc: RequestTimeout):
        metrics.requests.labels(request.url.path, "408").inc()
        return _error(408, str(exc), None, "timeout_error")

    @app.exception_handler(InputError)
    async def bad_input(request, exc: InputError):
        metrics.requests.labels(request.url.path, "400").inc()
        return _error(400, str(exc), getattr(exc, "param", None), "invalid_request_error")

    # ------------------------------------------------------------------ service
    @app.get("/health")
    async def health():
        return {"status": "ok", "pid": os.getpid()}  # the pid tells replicas apart

    @app.get("/ready")
    async def ready():
        if len(workers) != len(config.models):
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True, "models": list(workers)}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": name, "object": "model", "owned_by": "edgeinfer", "task": _task(w)} for name, w in workers.items()]}

    # ------------------------------------------------------------------ OpenAI
    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        worker = worker_for(body.model, DecoderWorker)
        prompts = _prompt_list(body.prompt)
        requests = [Request(_encode(worker, p, "prompt"), _options(worker, body), seed=_seed(body, k))
                    for p in prompts for k in range(body.n)]
        return await _answer(worker, body, requests, sum(len(r.tokens) for r in requests[:: body.n]), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        worker = worker_for(body.model, DecoderWorker)
        options = _options(worker, body)
        tokens, segments, reply = _chat_layout(worker, body, options.max_new_tokens)
        requests = [Request(tokens, options, segments, reply, seed=_seed(body, k)) for k in range(body.n)]
        return await _answer(worker, body, requests, len(tokens), chat=True)

    async def _answer(worker: DecoderWorker, body: Sampling, requests: list[Request], prompt_tokens: int,
                      chat: bool):
        """Submit every choice now (so a full queue is a 429 before any byte), then answer or stream."""
        tidy_text = chat and worker.model.uses_segments  # WordPiece chat bundles decode with spaces
        runs = []
        try:
            for r in requests:
                runs.append(worker.submit(r, config.timeout_s))
            first = [await run.next() for run in runs]
        except BaseException:
            for run in runs:
                run.cancel()
            raise
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()),
                "model": worker.name}
        if body.stream:
            return StreamingResponse(_sse(runs, first, head, chat, tidy_text, prompt_tokens, body),
                                     media_type="text/event-stream")
        choices, completion_tokens = [], 0
        for index, (run, event) in enumerate(zip(runs, first)):
            text, tokens, reason = event.text, int(event.token_id is not None), event.finished
            while (event := await run.next()) is not None:
                text += event.text
                tokens += event.token_id is not None
                reason = event.finished or reason
            completion_tokens += tokens
            text = tidy(text) if tidy_text else text
            choice = {"index": index, "finish_reason": FINISH.get(reason, reason)}
            choice |= {"message": {"role": "assistant", "content": text}} if chat else {"text": text, "logprobs": None}
            choices.append(choice)
        metrics.requests.labels("/v1/chat/completions" if chat else "/v1/completions", "200").inc()
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        return {**head, "object": "chat.completion" if chat else "text_completion", "choices": choices,
                "usage": usage}

    async def _sse(runs, first, head, chat: bool, tidy_text: bool, prompt_tokens: int, body: Sampling):
        kind = "chat.completion.chunk" if chat else "text_completion"
        completion_tokens = 0
        try:
            for index, (run, event) in enumerate(zip(runs, first)):
                shown = TidyStream() if tidy_text else None
                if chat:
                    yield _chunk(head, kind, index, {"delta": {"role": "assistant", "content": ""}})
                while event is not None:
                    completion_tokens += event.token_id is not None
                    text = shown.push(event.text, bool(event.finished)) if shown else event.text
                    reason = FINISH.get(event.finished, event.finished) if event.finished else None
                    part = {"delta": {"content": text}} if chat else {"text": text, "logprobs": None}
                    if text or reason:
                        yield _chunk(head, kind, index, {**part, "finish_reason": reason})
                    event = await run.next()
            if body.stream_options is not None and body.stream_options.include_usage:
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}
                yield f"data: {json.dumps({**head, 'object': kind, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"
            metrics.requests.labels("/v1/chat/completions" if chat else "/v1/completions", "200").inc()
        except (InputError, RequestTimeout) as exc:  # after the headers: the error goes in the stream
            yield f"data: {json.dumps({'error': {'message': str(exc), 'type': 'invalid_request_error'}})}\n\n"
        finally:
            for run in runs:  # a client that left cancels every choice still running
                run.cancel()

    # ------------------------------------------------------------------ QA and Xiangqi
    @app.post("/v1/qa")
    async def qa(body: QaItem | list[QaItem], model: str | None = Query(None)):
        worker = worker_for(model, QaWorker)
        items = body if isinstance(body, list) else [body]
        if not items:
            raise ApiError(400, "give at least one question", "body")
        answers = []
        for i, item in enumerate(items):
            if (item.context is None) == (item.passages is None):
                raise ApiError(400, f"item {i}: give either context or passages", f"{i}.context")
        for item in items:
            found = await worker.answer(item.question, item.passages or [item.context], item.top_k)
            answers.append({"question": item.question, "answer": _qa_answer(found[0]) if found else None,
                            "answers": [_qa_answer(a) for a in found]})
        metrics.requests.labels("/v1/qa", "200").inc()
        return answers if isinstance(body, list) else answers[0]

    @app.post("/v1/xiangqi/move")
    async def xiangqi_move(body: MoveRequest):
        worker = worker_for(body.model, XiangqiWorker)
        moves = body.moves.split() if isinstance(body.moves, str) else body.moves
        result = await worker.move(moves, body.fen, body.top, body.search)
        metrics.requests.labels("/v1/xiangqi/move", "200").inc()
        return result

    return app


def _chunk(head: dict, kind: str, index: int, fields: dict) -> str:
    return f"data: {json.dumps({**head, 'object': kind, 'choices': [{'index': index, **fields}]}, ensure_ascii=False)}\n\n"


def _task(worker) -> str:
    return {DecoderWorker: "text-generation", QaWorker: "extractive-qa", XiangqiWorker: "xiangqi"}[type(worker)]


def _prompt_list(prompt) -> list:
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return [prompt]
    return list(prompt)


def _encode(worker: DecoderWorker, prompt, field: str) -> list[int]:
    try:
        return worker.encode(prompt)
    except InputError as exc:
        raise ApiError(400, f"{field}: {exc}", field) from exc


def _options(worker: DecoderWorker, body: Sampling):
    """OpenAI's fields as decoding options; unset ones take the bundle's generation defaults."""
    given = {"max_new_tokens": body.max_tokens, "min_new_tokens": body.min_tokens or None, "top_k": body.top_k,
             "top_p": body.top_p, "repetition_penalty": body.repetition_penalty, "stop_strings": body.stop}
    if body.temperature == 0:
        given["do_sample"] = False
    elif body.temperature is not None or body.top_p is not None or body.top_k:
        given |= {"do_sample": True, "temperature": body.temperature}
    if body.ignore_eos:
        given["stop_token_ids"] = []
    given = {k: v for k, v in given.items() if v is not None}
    if "min_new_tokens" in given and "max_new_tokens" in given and given["min_new_tokens"] > given["max_new_tokens"]:
        raise ApiError(400, "min_tokens must not exceed max_tokens", "min_tokens")
    try:
        return decode_options(worker.model, **given)
    except InputError as exc:
        raise ApiError(400, str(exc)) from exc


def _seed(body: Sampling, sample: int):
    return None if body.seed is None else [body.seed, sample]


def _chat_layout(worker: DecoderWorker, body: ChatRequest, max_new: int):
    """The messages as the bundle was trained to read them: speaker segments for chat bundles, the checkpoint's own
    chat template where its bundle ships one, else plain text."""
    model = worker.model
    if model.chat_template is not None:
        try:
            text = model.chat_template.render([{"role": m.role, "content": m.content} for m in body.messages])
        except InputError as exc:
            raise ApiError(400, f"messages: {exc}", "messages") from exc
        return _encode(worker, text, "messages"), None, 0
    turns = [m.content for m in body.messages if m.role != "system"]
    if not turns:
        raise ApiError(400, "messages hold no user or assistant turn", "messages")
    if model.uses_segments:
        budget = model.max_positions - max_new - 1
        if budget < 3:
            raise ApiError(400, f"max_tokens {max_new} leaves no room for the messages", "max_tokens")
        try:
            tokens, segments = encode_dialogue(model.tokenizer, turns, budget)
        except InputError as exc:
            raise ApiError(400, f"messages: {exc}", "messages") from exc
        return tokens, segments, reply_segment_id(segments)
    text = "".join(f"{m.role}: {m.content}\n" for m in body.messages) + "assistant:"
    return _encode(worker, text, "messages"), None, 0


def _qa_answer(answer) -> dict:
    return {"text": answer.text, "passage": answer.passage, "start": answer.start, "end": answer.end,
            "score": answer.score}


def load_models(config: ServeConfig) -> tuple[dict, dict]:
    """Open every served bundle and draft bundle once: ({name: model}, {name: its draft model}). A bundle that cannot
    be opened is a BundleError naming its model; a draft that cannot draft for its model, an InputError."""
    models, drafts = {}, {}
    for name, folder in config.models.items():
        try:  # a model and its draft take turns on the same cores: idle threads that spin would hold them up
            models[name] = load(folder, device=config.device, threads=config.threads,
                                allow_spinning=False if name in config.drafts else None)
        except BundleError as exc:
            raise BundleError(f"model {name}: {exc}") from exc
    for name, folder in config.drafts.items():
        if models[name].manifest["task"] not in ("causal-lm", "chat"):
            raise InputError(f"--draft {name}: model {name} is not a text decoder")
        try:
            drafts[name] = load(folder, device=config.device, threads=config.threads, allow_spinning=False)
            check_draft_model(drafts[name], models[name])
        except EdgeInferError as exc:
            raise type(exc)(f"--draft {name}: {exc}") from exc
    return models, drafts
