"""One-token decode steps over a shared-buffer cache, with the step's inputs bound once.

A decode step of the small default bundles takes about half a millisecond, and creating fresh input tensors and a
fresh logits buffer for every call cost a fifth of that. Here each input is a numpy array bound once (onnxruntime
reads it in place, so a step only writes new values into it), only the attention mask, whose width grows, is
bound per step, and the logits land in one buffer that the next step overwrites.
"""

from __future__ import annotations

import numpy as np

from .kv_cache import KVCache


class StepBinding:
    def __init__(self, model, cache: KVCache) -> None:
        if not cache.shared:
            raise ValueError("StepBinding needs a shared-buffer cache (concat caches rebind their presents each step)")
        self.model, self.cache = model, cache
        rows = cache.rows
        self.inputs = {"input_ids": np.zeros((rows, 1), np.int64), "position_ids": np.zeros((rows, 1), np.int64),
                       "logits_positions": np.zeros((rows, 1), np.int64)}
        if model.uses_segments:
            self.inputs["token_type_ids"] = np.zeros((rows, 1), np.int64)
        self.logits = np.empty((rows, 1, model.vocab_size), np.float32)
        self._one_each = np.ones(rows, dtype=np.int64)  # tokens a step adds to each row
        self._binding = None
        self._bound_values = None  # the cache's OrtValues the binding holds

    def _bind(self) -> None:
        import onnxruntime as ort

        binding = self.model.session.io_binding()
        self.cache.bind(binding)
        for name, array in self.inputs.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
        binding.bind_output("logits", "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data)
        self._binding, self._bound_values = binding, self.cache.values

    def __call__(self, tokens: np.ndarray, segments: np.ndarray | None = None) -> np.ndarray:
        """Feed each row one token; returns (rows, vocab) logits, valid until the next call."""
        cache = self.cache
        if self._binding is None or cache.values is not self._bound_values:  # first step, or the cache was re-made
            self._bind()
        self.inputs["input_ids"][:, 0] = tokens
        self.inputs["position_ids"][:, 0] = cache.lengths
        if segments is not None:
            self.inputs["token_type_ids"][:, 0] = segments
        mask = cache.step_mask(self._one_each)
        self._binding.bind_cpu_input("attention_mask", mask)
        self.model.session.run_with_iobinding(self._binding)
        cache.advance([], mask, self._one_each)
        return self.logits[:, 0]
