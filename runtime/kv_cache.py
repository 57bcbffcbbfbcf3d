"""KV caches bound through onnxruntime IO binding, in the layout the bundle's manifest names.

- "shared_buffer" (contrib GroupQueryAttention): one (batch, heads, capacity, head_dim) buffer per layer and
  per key/value, bound as both past input and present output. The op writes each row's new keys in place at
  that row's length, so a decode step copies nothing. Rows are right-padded.
- "concat" (opset-23 Attention): present = past + new. The present OrtValues of one step are bound as the
  next step's past, never passing through numpy. Rows are left-padded.
"""

from __future__ import annotations

import numpy as np


class KVCache:
    def __init__(self, model, batch: int, capacity: int) -> None:
        import onnxruntime as ort

        self.model = model
        self.shared = model.shared_cache
        self.device = model.device_type
        self.batch, self.capacity = batch, capacity
        length = capacity if self.shared else 0
        shape = (batch, model.n_head, length, model.head_dim)
        self.values = {
            name: ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, self.device, 0)
            for name in model.past_names
        }
        if self.shared:
            for value in self.values.values():  # fresh buffers must not hold NaN bit patterns
                if self.device == "cpu":
                    value.numpy()[...] = 0.0
        self.length = 0  # past tokens held (padded length for concat, max row length for shared)

    def bind(self, binding) -> None:
        """Bind the past inputs, and the present outputs where they go (in place, or fresh ORT values)."""
        for past, present in zip(self.model.past_names, self.model.present_names):
            binding.bind_ortvalue_input(past, self.values[past])
            if self.shared:
                binding.bind_ortvalue_output(present, self.values[past])
            else:
                binding.bind_output(present, self.device)

    def update(self, presents: list, new_length: int) -> None:
        """Take the step's present OrtValues (in `present_names` order) as the next step's past."""
        if not self.shared:
            self.values = dict(zip(self.model.past_names, presents))
        self.length = new_length
