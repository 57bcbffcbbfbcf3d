"""A loaded decoder bundle (GPT): the public face of the `edgeinfer.lm` package.

`CausalLM` checks a bundle against its graph and holds its session and tokenizer; its methods are the decode
API tasks use: `generate`/`stream` (the simple front door), `prefill` (keep a prefix), `score` (candidate
continuations of a prefix), `engine` (request-level continuous batching for a server) and `logits` (no cache).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..bundle import cache_parts, load_tokenizer
from ..errors import BundleError, InputError
from ..huge_pages import collapse, new_mappings
from ..session import open_session
from . import generate as front_door
from .beam import beam_search
from .cache import KVCache
from .chat_template import load_chat_template
from .checks import check_decoder_graph
from .engine import Engine
from .options import is_int
from .score import ContinuationScorer
from .step import Step, positions_from_mask
from .types import Generation, Prefix, StreamEvent

# onnxruntime's CUDA GroupQueryAttention kernel takes float16 / bfloat16 only (contrib_ops/cuda/bert): a float32
# contrib bundle opened on CUDA runs its attention on the CPU, copying the cache to the host and back each step.
CONTRIB_ON_CUDA = (
    "this bundle's attention is GroupQueryAttention in float32, which onnxruntime runs on the CPU even in a CUDA "
    "session (its CUDA kernel takes float16/bfloat16): the cache stays in host memory and activations are copied "
    "to and from the device every layer and step; for CUDA, export with --quantize float16 (the op's CUDA kernel) "
    "or --attention standard (opset-23 Attention has a float32 CUDA kernel)"
)


CACHE_TYPES = {"tensor(float)": np.dtype(np.float32), "tensor(float16)": np.dtype(np.float16)}


class CausalLM:
    """A GPT bundle opened on an onnxruntime session."""

    def __init__(self, folder: Path, manifest: dict, device: str = "auto", threads: int | None = None,
                 allow_spinning: bool | None = None) -> None:
        self.folder = folder
        self.manifest = manifest
        with new_mappings() as session_memory:  # the weights onnxruntime allocated and prepacked (see use_huge_pages)
            self.session, self.providers = open_session(folder / manifest["files"]["model"], manifest, device, threads,
                                                            allow_spinning)
        self._session_memory = session_memory
        cfg = manifest["model"]
        self.n_layer, self.n_head, self.head_dim = cfg["n_layer"], cfg["n_head"], cfg["head_dim"]
        self.n_kv_head = cfg.get("n_kv_head", self.n_head)  # heads in the KV cache (fewer: grouped-query attention)
        self.vocab_size, self.max_positions = cfg["vocab_size"], cfg["max_positions"]
        self.uses_segments = bool(cfg.get("n_segments"))
        kv = manifest["kv_cache"]
        self.shared_cache = kv["layout"] == "shared_buffer"
        # "query_key": the graph takes (batch, seq, total) masks, so callers may pass any pattern (tree scoring)
        self.query_key_mask = manifest.get("attention_mask", "key") == "query_key"
        self.bidirectional_prefix = cfg.get("bidirectional_prefix", 0)  # prompt positions that see each other
        layers = [(i, part) for i in range(self.n_layer) for part in cache_parts(kv)]  # values only: synthesizers
        self.past_names = [kv[f"past_{part}"].format(layer=i) for i, part in layers]
        self.present_names = [kv[f"present_{part}"].format(layer=i) for i, part in layers]
        self.device_type = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        self.cache_device = self.device_type  # where the KV cache lives: on the device of the attention op
        self.cache_dtype = self._cache_dtype()
        if self.device_type == "cuda" and "GroupQueryAttention" in manifest["fused_ops"] and self.cache_dtype == np.float32:
            warnings.warn(CONTRIB_ON_CUDA, RuntimeWarning, stacklevel=3)
            self.cache_device = "cpu"  # the op writes in place into what it is bound: host memory, where it runs
        check_decoder_graph(self)
        self.tokenizer = load_tokenizer(folder, manifest, self.vocab_size)
        # the checkpoint's own chat layout (None: the bundle ships none); compiled here, so a bad one fails the load
        self.chat_template = load_chat_template(folder, manifest)
        self._scorer: ContinuationScorer | None = None

    def _cache_dtype(self) -> np.dtype:
        """The KV cache's element type, as the graph declares it (float32; float16 in a float16 bundle); the manifest
        must say the same."""
        name = self.present_names[0]
        graph_type = {o.name: o.type for o in self.session.get_outputs()}.get(name)
        declared = next((o["dtype"] for o in self.manifest["outputs"] if o["name"] == name), None)
        dtype = CACHE_TYPES.get(graph_type)
        if dtype is None:
            raise BundleError(f"bundle {self.folder}: the graph's {name} is {graph_type}; the runtime keeps float32 "
                              f"or float16 caches")
        if declared != dtype.name:
            raise BundleError(f"bundle {self.folder}: manifest output {name!r} has dtype {declared!r}, the graph "
                              f"{dtype.name!r}")
        return dtype

    @property
    def provider(self) -> str:
        return self.providers.name

    # ------------------------------------------------------------------ text
    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise InputError("this bundle has no tokenizer: pass token ids instead of text")
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate: the tokenizer cannot take it
            raise InputError(f"text is not valid Unicode: {exc.reason} at character {exc.start}") from exc
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else ""

    # ------------------------------------------------------------------ decoding
    def generate(self, prompts, num_beams: int = 1, **options) -> list[Generation]:
        """Generate for a list of prompts (text or token ids): one `Generation` per prompt and sample.

        Options: max_new_tokens, min_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty,
        stop_token_ids, stop_strings, logits_processor (defaults: the manifest's generation block), seed,
        num_return_sequences, max_active, speculate, draft, segment_ids, reply_segment, prefix; num_beams > 1 for
        beam search (with length_penalty, early_stopping).
        """
        if not is_int(num_beams) or not 1 <= num_beams <= front_door.MAX_BATCH:
            raise InputError(f"num_beams must be an integer in [1, {front_door.MAX_BATCH}], got {num_beams!r}")
        if num_beams > 1:
            return beam_search(self, prompts, num_beams=num_beams, **options)
        return front_door.generate(self, prompts, **options)

    def stream(self, prompts, **options) -> Iterator[StreamEvent]:
        """Yield `StreamEvent`s (request index, token id, text increment, finish reason) as tokens are chosen."""
        return front_door.stream(self, prompts, **options)

    def prefill(self, prompt, segment_ids=None, prefix: Prefix | None = None) -> Prefix:
        """Run a prompt once (after `prefix`) and keep its KV cache to continue or fork later."""
        return front_door.prefill(self, prompt, segment_ids, prefix)

    def score(self, prefix: Prefix, candidates) -> np.ndarray:
        """Summed log-probabilities of each candidate continuation (an (n, length) array of ids) after `prefix`."""
        return self._continuations()(prefix, self._check_ids(candidates, "candidates"))

    def score_prompt(self, prompt, candidates, segment_ids=None) -> np.ndarray:
        """`score` after a prompt that need not be kept: on a query-key bundle the prompt and the candidates are run
        in one call (one call fewer than `prefill` then `score`, the same scores)."""
        return self.score_prompts([prompt], [candidates], None if segment_ids is None else [segment_ids])[0]

    def score_prompts(self, prompts, candidates, segment_ids=None) -> list[np.ndarray]:
        """`score_prompt` for several prompts of one length, each with its own candidates (and segment ids): on a
        query-key bundle all of them in one call, a batch row each."""
        if not isinstance(prompts, (list, tuple)) or not 1 <= len(prompts) <= front_door.MAX_BATCH:
            raise InputError(f"prompts must be a list of 1 to {front_door.MAX_BATCH} prompts")
        for name, given in (("candidates", candidates), ("segment_ids", segment_ids)):
            if given is not None and (not isinstance(given, (list, tuple)) or len(given) != len(prompts)):
                raise InputError(f"{name} must be a list with one entry per prompt ({len(prompts)})")
        segment_ids = segment_ids or [None] * len(prompts)
        if not self.query_key_mask:
            return [self.score(self.prefill(prompt, segments), choices)
                    for prompt, choices, segments in zip(prompts, candidates, segment_ids)]
        rows = [front_door.prompt_with_segments(self, prompt, segments, 0)
                for prompt, segments in zip(prompts, segment_ids)]
        if len({len(ids) for ids, _ in rows}) > 1:
            raise InputError(f"prompts scored together must have one length, got {sorted({len(i) for i, _ in rows})}")
        return self._continuations().after_prompts(rows, [self._check_ids(c, "candidates") for c in candidates])

    def _continuations(self) -> ContinuationScorer:
        if self._scorer is None:
            self._scorer = ContinuationScorer(self)
        return self._scorer

    def engine(self, slots: int, capacity: int | None = None, max_queue: int | None = None,
               speculate: int = 0, draft: CausalLM | None = None) -> Engine:
        """A request-level engine over this model: `submit` from any thread, `start()` its loop (a server's core).
        With `draft` (a smaller bundle with this one's tokenizer), `speculate` draft tokens come from it."""
        return Engine(self, slots, capacity, max_queue, speculate, draft)

    def use_huge_pages(self) -> int:
        """Move the session's weight buffers into 2 MiB pages; returns the bytes moved (0 where the OS cannot).

        Decoding then runs a few percent faster (fewer TLB misses while the weights stream), for a copy of the
        weights once (about 1 s for 500 MB): worth it for a long-lived model. See `edgeinfer.huge_pages`.
        EDGEINFER_HUGE_PAGES=0 turns it off (a started engine then leaves the weights where they are).
        """
        setting = os.environ.get("EDGEINFER_HUGE_PAGES", "1")
        if setting not in ("0", "1"):
            raise InputError(f"EDGEINFER_HUGE_PAGES must be 0 or 1, got {setting!r}")
        if self.device_type != "cpu" or setting == "0":
            return 0
        moved = collapse(self._session_memory)
        self._session_memory = []  # once is enough
        return moved

    def _check_ids(self, input_ids, name: str = "input_ids") -> np.ndarray:
        try:
            ids = np.asarray(input_ids)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{name} must be a (batch, seq) array of token ids: {exc}") from exc
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
            raise InputError(f"{name} must be a non-empty (batch, seq) array of token ids, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer) or ids.dtype == np.bool_:
            raise InputError(f"{name} must hold integers, got dtype {ids.dtype}")
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise InputError(f"{name} holds ids outside [0, {self.vocab_size}): min {ids.min()}, max {ids.max()}")
        if ids.shape[1] > self.max_positions:
            raise InputError(f"sequence of {ids.shape[1]} tokens exceeds the model's {self.max_positions} positions")
        return ids.astype(np.int64)

    def logits(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        """Logits (batch, seq, vocab) for every position of a batch, without a cache.

        attention_mask marks real tokens with 1 (left or right padding); padded positions give meaningless rows.
        """
        ids = self._check_ids(input_ids)
        batch, seq = ids.shape
        mask = np.ones_like(ids) if attention_mask is None else _int_array(attention_mask, "attention_mask")
        if mask.shape != ids.shape or not np.isin(mask, (0, 1)).all():
            raise InputError(f"attention_mask must be 0s and 1s shaped like input_ids {ids.shape}, got {mask.shape}")
        types = None
        if self.uses_segments and token_type_ids is not None:
            types = _int_array(token_type_ids, "token_type_ids")
            n_segments = self.manifest["model"]["n_segments"]
            if types.shape != ids.shape or not np.issubdtype(types.dtype, np.integer) or types.min() < 0 \
                    or types.max() >= n_segments:
                raise InputError(f"token_type_ids must be an integer array shaped like input_ids, in [0, {n_segments})")
        step = Step(self, KVCache(self, batch, seq))  # a cache for this call only
        logits_at = np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq))
        return step.run(ids, positions_from_mask(mask), mask, logits_at, types, kept=mask.sum(axis=1)).copy()


def _int_array(values, name: str) -> np.ndarray:
    """`values` as an integer array, or an InputError naming `name` (ragged or non-numeric input)."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{name} must be a (batch, seq) array of integers: {exc}") from exc
    if not np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        raise InputError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64)
