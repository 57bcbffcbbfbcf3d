"""KV caches bound through onnxruntime IO binding, in the layout the bundle's manifest names.

The cache is the one owner of capacity: `capacity` tokens per row, set when it is made, checked on every
`advance`. A freed row has length 0 and is never advanced.

- "shared_buffer" (contrib GroupQueryAttention): one (rows, kv_heads, capacity, head_dim) buffer per layer and per
  key/value, bound as both past input and present output. The op writes each row's new keys in place at that
  row's length, so a decode step copies nothing. Row b holds its tokens in slots [0, lengths[b]).
- "concat" (opset-23 Attention): present = past + new. The present OrtValues of one step are bound as the next
  step's past, never passing through numpy. All rows share one width; `mask` says which slots are real (rows
  are left-padded, and a row that joined late, continued a prefix or sat idle has holes). When the width
  reaches twice the capacity, each row's real slots are packed to the right (attention depends only on the mask
  and the explicit positions, so this changes no logit), which keeps memory bounded under continuous batching.

Forking (`take`) and joining rows (`insert`) copy; decoding steps never do. On CUDA the caches live in device
memory; forks and joins go through the host there.
"""

from __future__ import annotations

import numpy as np

from ..errors import EdgeInferError


class CapacityError(EdgeInferError):
    """A row was asked to hold more tokens than its cache was sized for."""


class KVCache:
    def __init__(self, model, rows: int, capacity: int) -> None:
        if not 1 <= capacity <= model.max_positions:
            raise CapacityError(f"cache capacity must be in [1, {model.max_positions}], got {capacity}")
        self.model = model
        self.shared = model.shared_cache
        self.device = model.cache_device
        self.capacity = capacity
        self.lengths = np.zeros(rows, dtype=np.int64)  # real tokens per row
        width = capacity if self.shared else 0
        shape = (rows, model.n_kv_head, width, model.head_dim)
        self._set_arrays([np.zeros(shape, model.cache_dtype) for _ in model.past_names])  # the graph's cache type
        self.mask = np.zeros((rows, 0), dtype=np.int64)  # concat layout only

    # ------------------------------------------------------------------ storage
    def _set_arrays(self, arrays: list[np.ndarray]) -> None:
        import onnxruntime as ort

        if self.device == "cpu":
            self._arrays = arrays  # keeps the memory the OrtValues point at alive
            self.values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
        else:
            self._arrays = None
            self.values = [ort.OrtValue.ortvalue_from_numpy(a, self.device, 0) for a in arrays]
        self._leading: dict[int, list] = {}  # rows -> OrtValues over the first rows (see `values_of`)

    def commit_memory(self) -> None:
        """Write every page of the host buffers once. The kernel maps a fresh page at its first write, about 10 us a
        page here: without this, each request landing in a row no request had used paid 0.18 s of page faults in its
        prefill (16 rows x 1024 tokens of GPT-2-small: 1.2 GB). Long-lived caches (a server's engine) commit up front."""
        if self._arrays is not None:
            for array in self._arrays:
                array.fill(0)

    def arrays(self) -> list[np.ndarray]:
        """Host arrays of the caches: the memory itself on CPU, copies on CUDA (write back with `_set_arrays`).

        On CPU the arrays we allocated are returned, not `OrtValue.numpy()` views: those do not keep the memory
        alive, so re-wrapping them after the owner is dropped would read freed memory.
        """
        if self._arrays is not None:
            return self._arrays
        return [v.numpy() for v in self.values]

    @property
    def can_view_rows(self) -> bool:
        return self.shared and self.device == "cpu"

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        """Slots a step attends over: the mask width."""
        return int(self.lengths.max(initial=0)) if self.shared else self.mask.shape[1]

    def room(self, row: int) -> int:
        """How many more tokens row `row` can take."""
        return self.capacity - int(self.lengths[row])

    # ------------------------------------------------------------------ one step
    def step_mask(self, fed: np.ndarray, kept: np.ndarray | None = None) -> np.ndarray:
        """The (rows, total) key mask for feeding `fed[b]` tokens to each row, of which `kept[b]` are real.

        Shared buffers: a row sees its cache and everything fed (the op needs every row's length to grow by what
        it is fed). Concat: the new slots are right-aligned; fed-but-not-kept slots (idle rows) stay masked.
        """
        kept = fed if kept is None else kept
        if self.shared:
            total = self.lengths + fed
            return (np.arange(int(total.max()))[None] < total[:, None]).astype(np.int64)
        width = int(fed.max())
        new = (np.arange(width)[None] >= (width - kept)[:, None]).astype(np.int64)
        return np.concatenate([self.mask, new], axis=1)

    def values_of(self, rows: int) -> list:
        """The cache OrtValues of the first `rows` rows: views of the same memory (host shared buffer only), so a
        step over the running rows need not compute the idle ones after them."""
        if rows == self.rows:
            return self.values
        if not self.can_view_rows:
            raise CapacityError("only a host shared-buffer cache can run a step over some of its rows")
        if rows not in self._leading:
            import onnxruntime as ort

            self._leading[rows] = [ort.OrtValue.ortvalue_from_numpy(a[:rows]) for a in self._arrays]
        return self._leading[rows]

    def bind(self, binding, rows: int | None = None) -> None:
        """Bind past inputs, and present outputs where they go (in place, or fresh ORT values)."""
        values = self.values if rows is None else self.values_of(rows)
        for past, present, value in zip(self.model.past_names, self.model.present_names, values):
            binding.bind_ortvalue_input(past, value)
            if self.shared:
                binding.bind_ortvalue_output(present, value)
            else:
                binding.bind_output(present, self.device)

    def check_room(self, kept: np.ndarray) -> None:
        """Raise before a step that would put more than `capacity` tokens in a row."""
        over = np.flatnonzero(self.lengths + kept > self.capacity)
        if over.size:
            row = int(over[0])
            raise CapacityError(f"cache row {row} holds {self.lengths[row]} of {self.capacity} tokens and cannot "
                                f"take {kept[row]} more")

    def advance(self, presents: list, mask: np.ndarray, kept: np.ndarray) -> None:
        """After a step: take the presents as the next past (concat) and count the tokens each row kept."""
        if not self.shared:
            self.values = presents
            self._arrays = None
            self.mask = mask
            if self.mask.shape[1] >= 2 * self.capacity:
                self._pack()
        self.lengths = self.lengths + kept

    def rollback(self, row: int, n: int) -> None:
        """Forget the last `n` tokens of row `row`: drafts that verification did not accept."""
        if n <= 0:
            return
        self.lengths[row] -= n
        if not self.shared:  # the slots stay until the next pack, masked off
            self.mask[row, np.flatnonzero(self.mask[row])[-n:]] = 0

    def free(self, row: int) -> None:
        """Forget row `row`'s tokens: its slot takes the next request."""
        self.lengths[row] = 0
        if not self.shared:
            self.mask[row] = 0

    def _pack(self) -> None:
        """Concat layout: move each row's real slots to the right end of a buffer as wide as the longest row."""
        width = int(self.mask.sum(axis=1).max(initial=0))
        packed = [np.zeros((self.rows, a.shape[1], width, a.shape[3]), dtype=a.dtype) for a in self.arrays()]
        mask = np.zeros((self.rows, width), dtype=np.int64)
        for row in range(self.rows):
            slots = np.flatnonzero(self.mask[row])
            if slots.size:
                for dst, src in zip(packed, self.arrays()):
                    dst[row, :, width - slots.size :] = src[row][:, slots]
                mask[row, width - slots.size :] = 1
        self._set_arrays(packed)
        self.mask = mask

    # ------------------------------------------------------------------ forks and joins
    def row_view(self, row: int, count: int = 1) -> KVCache:
        """A cache of rows [row, row + count) sharing their memory (shared layout): prefill writes straight into the
        batch. Its lengths are a copy: write them back after a step."""
        if not self.can_view_rows:
            raise CapacityError("only a host shared-buffer cache has row views")
        view = KVCache.__new__(KVCache)
        view.model, view.shared, view.device, view.capacity = self.model, True, "cpu", self.capacity
        view.lengths = self.lengths[row : row + count].copy()
        view._set_arrays([a[row : row + count] for a in self.arrays()])
        view.mask = np.zeros((count, 0), dtype=np.int64)
        return view

    def take(self, rows, capacity: int | None = None, scratch: ForkScratch | None = None) -> KVCache:
        """A new cache holding copies of `rows` (repeats allowed): forks for beams, candidates and continuations.

        A shared-buffer fork gets `capacity` slots (default: this cache's); only the slots in use are copied.
        A concat-layout fork can copy into `scratch` memory that a caller reuses for every fork, instead of fresh
        allocations (which cost page faults on every call).
        """
        rows = np.asarray(rows, dtype=np.int64)
        fork = KVCache.__new__(KVCache)
        fork.model, fork.shared, fork.device = self.model, self.shared, self.device
        fork.capacity = min(capacity or self.capacity, self.model.max_positions)
        fork.lengths = self.lengths[rows]
        used = int(fork.lengths.max(initial=0))
        if used > fork.capacity:
            raise CapacityError(f"a fork of capacity {fork.capacity} cannot hold {used} cached tokens")
        if self.shared:
            arrays = []
            for a in self.arrays():
                copy = np.zeros((len(rows), a.shape[1], fork.capacity, a.shape[3]), dtype=a.dtype)
                copy[:, :, :used] = a[rows, :, :used]
                arrays.append(copy)
            fork._set_arrays(arrays)
        elif scratch is not None:
            fork._set_arrays([np.take(a, rows, axis=0, out=out) for a, out in zip(self.arrays(), scratch.get(self, rows))])
        else:
            fork._set_arrays([np.ascontiguousarray(a[rows]) for a in self.arrays()])
        fork.mask = self.mask[rows]
        return fork

    def insert(self, row: int, source: KVCache, source_row: int = 0) -> None:
        """Put row `source_row` of another cache into slot `row`, replacing what was there."""
        length = int(source.lengths[source_row])
        if length > self.capacity:
            raise CapacityError(f"a row of {length} tokens does not fit a cache of capacity {self.capacity}")
        if self.shared:
            arrays = self.arrays()
            for dst, src in zip(arrays, source.arrays()):
                dst[row, :, :length] = src[source_row, :, :length]
            if self.device != "cpu":
                self._set_arrays(arrays)
        else:
            width = max(self.width, source.width)
            arrays = [_left_pad(a, width) for a in self.arrays()]
            for dst, src in zip(arrays, source.arrays()):
                dst[row] = _left_pad(src[source_row : source_row + 1], width)[0]
            mask = _left_pad(self.mask, width)
            mask[row] = _left_pad(source.mask[source_row : source_row + 1], width)[0]
            self._set_arrays(arrays)
            self.mask = mask
        self.lengths[row] = length


class ForkScratch:
    """Reusable memory for concat-layout forks of a growing size (continuation scoring forks on every call)."""

    def __init__(self) -> None:
        self._buffers: list[np.ndarray] = []

    def get(self, cache: KVCache, rows: np.ndarray) -> list[np.ndarray]:
        shapes = [(len(rows), *a.shape[1:]) for a in cache.arrays()]
        size, dtype = sum(int(np.prod(s)) for s in shapes), cache.arrays()[0].dtype
        if not self._buffers or self._buffers[0].size < size or self._buffers[0].dtype != dtype:
            self._buffers = [np.empty(2 * size, dtype=dtype)]
        out, offset = [], 0
        for shape in shapes:
            n = int(np.prod(shape))
            out.append(self._buffers[0][offset : offset + n].reshape(shape))
            offset += n
        return out


def _left_pad(a: np.ndarray, width: int) -> np.ndarray:
    """Pad axis 2 (caches) or axis 1 (masks) on the left with zeros up to `width`."""
    axis = 2 if a.ndim == 4 else 1
    missing = width - a.shape[axis]
    if missing == 0:
        return a.copy()
    pad = [(0, 0)] * a.ndim
    pad[axis] = (missing, 0)
    return np.pad(a, pad)
