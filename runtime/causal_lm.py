"""A loaded decoder bundle (GPT): checks and scoring without a cache. Decoding lives in the decode engine."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .errors import InputError
from .session import open_session

# onnxruntime's CUDA GroupQueryAttention kernel takes float16 / bfloat16 only (contrib_ops/cuda/bert): a float32
# contrib bundle opened on CUDA runs its attention on the CPU, copying the cache to the host and back each step.
CONTRIB_ON_CUDA = (
    "this bundle's attention is GroupQueryAttention in float32, which onnxruntime runs on the CPU even in a CUDA "
    "session (its CUDA kernel takes float16/bfloat16): expect cache copies every step; for CUDA, export with "
    "--attention standard (opset-23 Attention has a float32 CUDA kernel)"
)


def _load_tokenizer(folder: Path, manifest: dict):
    name = manifest["files"].get("tokenizer")
    if not name:
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / name))


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Absolute position of each token: count of real tokens before it (left or right padding alike)."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)


def query_key_mask(key_mask: np.ndarray, seq: int) -> np.ndarray:
    """(batch, total) key mask -> (batch, seq, total): what each of the last `seq` queries sees, causally."""
    total = key_mask.shape[1]
    causal = np.arange(total)[None, :] <= np.arange(total - seq, total)[:, None]
    return (causal[None] & (key_mask[:, None, :] != 0)).astype(np.int64)


class CausalLM:
    """A GPT bundle opened on an onnxruntime session."""

    def __init__(self, folder: Path, manifest: dict, device: str = "auto", threads: int | None = None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.session, self.providers = open_session(folder / manifest["files"]["model"], manifest, device, threads)
        cfg = manifest["model"]
        self.n_layer, self.n_head, self.head_dim = cfg["n_layer"], cfg["n_head"], cfg["head_dim"]
        self.vocab_size, self.max_positions = cfg["vocab_size"], cfg["max_positions"]
        self.uses_segments = bool(cfg.get("n_segments"))
        kv = manifest["kv_cache"]
        self.shared_cache = kv["layout"] == "shared_buffer"
        # "query_key": the graph takes (batch, seq, total) masks, so callers may pass any pattern (tree scoring)
        self.query_key_mask = manifest.get("attention_mask", "key") == "query_key"
        layers = [(i, part) for i in range(self.n_layer) for part in ("key", "value")]
        self.past_names = [kv[f"past_{part}"].format(layer=i) for i, part in layers]
        self.present_names = [kv[f"present_{part}"].format(layer=i) for i, part in layers]
        self.device_type = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        cache_dtype = next(o["dtype"] for o in manifest["outputs"] if o["name"] == self.present_names[0])
        if self.device_type == "cuda" and "GroupQueryAttention" in manifest["fused_ops"] and cache_dtype == "float32":
            warnings.warn(CONTRIB_ON_CUDA, RuntimeWarning, stacklevel=3)
        self.tokenizer = _load_tokenizer(folder, manifest)
        self._decoder = None

    @property
    def provider(self) -> str:
        return self.providers.name

    # ------------------------------------------------------------------ text
    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise InputError("this bundle has no tokenizer: pass token ids instead of text")
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else ""

    # ------------------------------------------------------------------ decoding
    @property
    def decoder(self):
        if self._decoder is None:
            from .decoder import Decoder

            self._decoder = Decoder(self)
        return self._decoder

    def generate(self, prompts, **options):
        """Generate for a list of prompts (text or token ids); see `Decoder.stream` for the options."""
        return self.decoder.generate(prompts, **options)

    def stream(self, prompts, **options):
        """Yield `StreamEvent`s (row, token id, text increment, finish reason) as tokens are chosen."""
        return self.decoder.stream(prompts, **options)

    def prefill(self, prompt, segment_ids=None, prefix=None):
        """Run a prompt once and keep its KV cache (`Prefix`) to continue or fork later."""
        return self.decoder.prefill(prompt, segment_ids, prefix)

    def forward(self, ids, positions, mask, logits_positions, types, cache):
        """One onnxruntime call through IO binding: (logits on the host, present cache OrtValues).

        mask: a (batch, total) key mask, or for query-key bundles also a (batch, seq, total) mask used as given.
        """
        if self.query_key_mask and mask.ndim == 2:
            mask = query_key_mask(mask, ids.shape[1])
        binding = self.session.io_binding()
        feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": mask, "logits_positions": logits_positions}
        if self.uses_segments:
            feeds["token_type_ids"] = types
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value, dtype=np.int64))
        binding.bind_output("logits", "cpu")
        cache.bind(binding)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()  # in binding order: logits, then the presents
        return outputs[0].numpy(), outputs[1:]

    def _check_ids(self, input_ids, name: str = "input_ids") -> np.ndarray:
        ids = np.asarray(input_ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
            raise InputError(f"{name} must be a non-empty (batch, seq) array of token ids, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
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
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask, dtype=np.int64)
        if mask.shape != ids.shape:
            raise InputError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}")
        cache_len = seq if self.shared_cache else 0
        empty = np.zeros((batch, self.n_head, cache_len, self.head_dim), dtype=np.float32)
        feeds = {
            "input_ids": ids,
            "position_ids": positions_from_mask(mask),
            "attention_mask": query_key_mask(mask, seq) if self.query_key_mask else mask,
            "logits_positions": np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy(),
            **{name: empty for name in self.past_names},
        }
        if self.uses_segments:
            types = np.zeros_like(ids) if token_type_ids is None else self._check_ids(token_type_ids, "token_type_ids")
            feeds["token_type_ids"] = types
        return self.session.run(["logits"], feeds)[0]
