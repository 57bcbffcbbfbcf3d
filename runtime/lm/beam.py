"""Beam search over the KV cache, one prompt at a time (its beams are the batch rows).

Default semantics are bert4keras's AutoRegressiveDecoder.beam_search: keep the `num_beams` best sequences by
summed log-probability; as soon as the best one ends with a stop token, return it; ended beams that are not
the best are dropped and the beam narrows. With `early_stopping=False`, ended beams are kept aside and the
search runs to max_new_tokens, then the best of all is taken by score / length**length_penalty.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from .cache import KVCache
from .generate import make_requests
from .options import apply_processor, decode_options, is_int, is_number
from .step import Step
from .types import Generation

MAX_LENGTH_PENALTY = 100  # |length_penalty| at most this: length ** penalty stays a finite float for any length


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def beam_search(
    model,
    prompts: Sequence,
    *,
    num_beams: int,
    length_penalty: float = 0.0,
    early_stopping: bool = True,
    segment_ids=None,
    reply_segment: int = 0,
    prefix=None,
    **options,
) -> list[Generation]:
    for unsupported in ("seed", "max_active", "speculate", "draft"):
        if options.pop(unsupported, None) is not None:
            raise InputError(f"{unsupported} does not apply to beam search")
    samples = options.pop("num_return_sequences", None)
    if samples is not None and not (is_int(samples) and samples == 1):
        raise InputError(f"beam search returns one sequence per prompt, not num_return_sequences={samples!r}")
    if not (is_number(length_penalty) and abs(length_penalty) <= MAX_LENGTH_PENALTY):
        raise InputError(f"length_penalty must be a number in [-{MAX_LENGTH_PENALTY}, {MAX_LENGTH_PENALTY}], "
                         f"got {length_penalty!r}")
    if not isinstance(early_stopping, (bool, np.bool_)):
        raise InputError(f"early_stopping must be true or false, got {early_stopping!r}")
    if options.get("do_sample") is None:
        options["do_sample"] = False  # a bundle that samples by default still searches beams
    settings = decode_options(model, **options)
    if settings.sampling.do_sample:
        raise InputError("do_sample does not apply to beam search")
    requests = make_requests(model, prompts, settings, 0, 1, segment_ids, reply_segment, prefix)
    return [_search_one(model, settings, i, r, num_beams, length_penalty, early_stopping)
            for i, r in enumerate(requests)]


def _search_one(model, settings, index, request, width, length_penalty, early_stopping) -> Generation:
    prefix = request.prefix
    start = len(prefix.token_ids) if prefix else 0
    capacity = min(model.max_positions, start + len(request.tokens) + settings.max_new_tokens)
    if start + len(request.tokens) >= model.max_positions:
        raise InputError(f"prompt of {start + len(request.tokens)} tokens leaves no room in the model's positions")
    cache = prefix.cache.take([0], capacity=capacity) if prefix else KVCache(model, 1, capacity)
    segments = [request.segments or [0] * len(request.tokens)] if model.uses_segments else None
    logprobs = log_softmax(Step(model, cache).feed([request.tokens], segments))  # (1, vocab)
    stops = np.array(sorted(settings.stop_token_ids), dtype=np.int64)
    steps = min(settings.max_new_tokens, capacity - start - len(request.tokens))

    beams = np.zeros((1, 0), dtype=np.int64)
    scores = np.zeros(1)
    finished: list[tuple[float, list[int], float]] = []  # (normalised score, tokens, raw score)
    for step in range(steps):
        if step < settings.min_new_tokens and stops.size:
            logprobs[:, stops] = -np.inf
        if settings.logits_processor is not None:
            for row in range(len(beams)):
                apply_processor(settings.logits_processor, index, beams[row].tolist(), logprobs[row])
        total = scores[:, None] + logprobs
        k = min(width, total.size)
        flat = np.argpartition(-total, k - 1, axis=None)[:k]
        flat = flat[np.argsort(-total.reshape(-1)[flat], kind="stable")]
        source, token = np.divmod(flat, total.shape[1])
        beams = np.concatenate([beams[source], token[:, None]], axis=1)
        scores = total.reshape(-1)[flat]
        ended = np.isin(token, stops)
        if ended.any():
            if early_stopping and ended[0]:  # the best beam has ended: done
                return _result(index, beams[0], scores[0], "stop_token", model)
            if not early_stopping:  # bert4keras drops ended beams that are not the best; here they wait
                length = beams.shape[1]
                finished += [(scores[i] / length**length_penalty, beams[i].tolist(), scores[i])
                             for i in np.flatnonzero(ended)]
            keep = ~ended
            beams, scores, source = beams[keep], scores[keep], source[keep]
            token = token[keep]
            if not len(beams):
                break
        if step == steps - 1:
            break
        cache = cache.take(source)
        types = np.full((len(beams), 1), request.reply_segment) if model.uses_segments else None
        logprobs = log_softmax(Step(model, cache).feed([[int(t)] for t in token], types))
    if len(beams):
        length = beams.shape[1]
        finished += [(s / length**length_penalty, b.tolist(), s) for s, b in zip(scores, beams)]
    _, tokens, raw = max(finished, key=lambda item: item[0])
    reason = "stop_token" if tokens[-1] in settings.stop_token_ids else "length"
    return _result(index, tokens, raw, reason, model)


def _result(index, tokens, score, reason, model) -> Generation:
    tokens = [int(t) for t in tokens]
    return Generation(prompt_index=index, token_ids=tokens, text=model.decode(tokens),
                      finish_reason=reason, score=float(score))
