"""Decoding options: one checked record per request, with the bundle's `generation` block as the defaults.

The manifest's `generation` block holds default values for the fields of `DecodeOptions` (the way a Hugging Face
generation config or onnxruntime-genai's search block does); a caller's options override them one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from ..bundle import GENERATION_FIELDS
from ..errors import EdgeInferError, InputError
from .sampling import SamplingOptions

LogitsProcessor = Callable[[int, list[int], np.ndarray], None]

SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingOptions))


@dataclass(frozen=True)
class DecodeOptions:
    max_new_tokens: int = 32
    min_new_tokens: int = 0
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    stop_token_ids: frozenset = frozenset()
    stop_strings: tuple = ()
    logits_processor: LogitsProcessor | None = None


def is_int(value) -> bool:
    return type(value) is int or isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def decode_options(model, **options) -> DecodeOptions:
    """Check the caller's options over the bundle's defaults; the bundle's eos is the default stop token."""
    unknown = sorted(set(options) - set(GENERATION_FIELDS) - {"logits_processor"})
    if unknown:
        raise InputError(f"unknown decoding option {unknown[0]!r}; known: {', '.join(GENERATION_FIELDS)}, "
                         "logits_processor")
    merged = {**model.manifest.get("generation", {}), **{k: v for k, v in options.items() if v is not None}}
    max_new = merged.get("max_new_tokens", 32)
    min_new = merged.get("min_new_tokens", 0)
    if not is_int(max_new) or max_new < 1:
        raise InputError(f"max_new_tokens must be an integer >= 1, got {max_new!r}")
    if not is_int(min_new) or not 0 <= min_new <= max_new:
        raise InputError(f"min_new_tokens must be an integer in [0, max_new_tokens], got {min_new!r}")
    sampling = check_sampling(SamplingOptions(**{k: merged[k] for k in SAMPLING_FIELDS if k in merged}))
    stops = merged.get("stop_token_ids")
    if stops is None:
        eos = model.manifest["special_tokens"].get("eos")
        stops = [] if eos is None else [eos]
    if not isinstance(stops, (list, tuple, set, frozenset, np.ndarray)) or getattr(stops, "ndim", 1) != 1:
        raise InputError(f"stop_token_ids must be a list of token ids, got {stops!r}")
    for token in stops:
        if not (is_int(token) and 0 <= token < model.vocab_size):
            raise InputError(f"stop token {token!r} is not a token id of this model (vocab {model.vocab_size})")
    strings = merged.get("stop_strings", ())
    if isinstance(strings, str):
        strings = [strings]
    if not isinstance(strings, Sequence) or not all(isinstance(s, str) and s for s in strings):
        raise InputError(f"stop_strings must be a list of non-empty strings, got {strings!r}")
    if strings and model.tokenizer is None:
        raise InputError("stop_strings need a bundle with a tokenizer")
    processor = merged.get("logits_processor")
    if processor is not None and not callable(processor):
        raise InputError(f"logits_processor must be callable, got {type(processor).__name__}")
    return DecodeOptions(int(max_new), int(min_new), sampling, frozenset(int(t) for t in stops), tuple(strings),
                         processor)


def apply_processor(processor: LogitsProcessor, request_id: int, generated: list[int], logits: np.ndarray) -> None:
    """Run a caller's logits processor on one row of logits, in place: if it raises, or leaves no finite logit
    (NaN written, every token banned), the request fails with an InputError saying so."""
    try:
        processor(request_id, generated, logits)
    except EdgeInferError:
        raise
    except Exception as exc:  # the caller's own code: its failure in the project's terms
        raise InputError(f"request {request_id}: logits_processor raised {type(exc).__name__}: {exc}") from exc
    if not np.isfinite(logits.max()):
        raise InputError(f"request {request_id}: no finite logits left to choose a token from")


def check_sampling(options: SamplingOptions) -> SamplingOptions:
    if not isinstance(options.do_sample, (bool, np.bool_)):
        raise InputError(f"do_sample must be true or false, got {options.do_sample!r}")
    if not (is_number(options.temperature) and 0 < options.temperature < math.inf):
        raise InputError(f"temperature must be a finite number > 0, got {options.temperature!r}")
    if not (is_int(options.top_k) and options.top_k >= 0):
        raise InputError(f"top_k must be an integer >= 0 (0 turns it off), got {options.top_k!r}")
    if not (is_number(options.top_p) and 0 < options.top_p <= 1):
        raise InputError(f"top_p must be in (0, 1], got {options.top_p!r}")
    if not (is_number(options.repetition_penalty) and 0 < options.repetition_penalty < math.inf):
        raise InputError(f"repetition_penalty must be a finite number > 0, got {options.repetition_penalty!r}")
    return options
