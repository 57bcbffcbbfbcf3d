"""The one way a decoder bundle's session is run on a cache: prefill, decode step and tree step alike.

`Step(model, cache)` owns one onnxruntime IO binding for its cache. Every call goes through `Step.run`: the
inputs are numpy arrays that onnxruntime reads in place and are bound again only when their shape changes, the
logits land in a bound numpy buffer, and shared-buffer caches are bound once as both past and present. A
decode step of the small default bundles takes about half a millisecond; fresh tensors per call cost a fifth of
that. `feed` (ragged tokens per row) and `decode` (one token per row) build the inputs; the masking rule
(causal, key padding, or a query-key pattern given whole) lives here and nowhere else.
"""

from __future__ import annotations

import numpy as np

from .cache import KVCache


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """Absolute position of each token: count of real tokens before it (left or right padding alike)."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)


def query_key_mask(key_mask: np.ndarray, seq: int, bidirectional_prefix: int = 0) -> np.ndarray:
    """(batch, total) key mask -> (batch, seq, total): what each of the last `seq` queries sees, causally.

    With `bidirectional_prefix` N, the tokens at positions below N also see each other both ways (a prefix LM: a
    Xiangqi board prompt has no order); those N tokens must then be fed in one call.
    """
    total = key_mask.shape[1]
    visible = np.arange(total)[None, None, :] <= np.arange(total - seq, total)[None, :, None]
    if bidirectional_prefix:
        in_prefix = (positions_from_mask(key_mask) < bidirectional_prefix) & (key_mask != 0)
        visible = visible | (in_prefix[:, None, :] & in_prefix[:, -seq:, None])
    return (visible & (key_mask[:, None, :] != 0)).astype(np.int64)


class Step:
    def __init__(self, model, cache: KVCache) -> None:
        self.model, self.cache = model, cache
        self._binding = model.session.io_binding()
        self._inputs: dict[str, np.ndarray] = {}  # name -> the array onnxruntime reads
        self._logits: np.ndarray | None = None
        self._bound_cache = None  # the cache OrtValues the binding holds (shared layout)
        self._one_each = np.ones(cache.rows, dtype=np.int64)

    def run(self, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, logits_at: np.ndarray,
            types: np.ndarray | None, kept: np.ndarray | None) -> np.ndarray:
        """One onnxruntime call; returns (rows, len(logits_at[0]), vocab) logits, valid until the next call.

        mask: (rows, total) key mask, or for query-key bundles also a (rows, seq, total) mask used as given.
        kept: tokens each row keeps in the cache (rows fed only to fill the batch keep none); None scores without
        keeping anything (a tree of candidates over a concat cache, whose presents are then dropped).
        """
        model, cache = self.model, self.cache
        if kept is None and cache.shared:
            raise ValueError("a shared-buffer cache keeps what it is fed: score trees on a concat cache")
        rows = ids.shape[0]  # the first `rows` cache rows (fewer than all: the idle rows after them are skipped)
        if kept is not None:
            kept = self._all_rows(kept)
            cache.check_room(kept)
        graph_mask = mask
        if model.query_key_mask and mask.ndim == 2:
            graph_mask = query_key_mask(mask, ids.shape[1], model.bidirectional_prefix)
        feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": graph_mask,
                 "logits_positions": logits_at}
        if model.uses_segments:
            feeds["token_type_ids"] = np.zeros_like(ids) if types is None else types
        for name, value in feeds.items():
            self._bind_input(name, value)
        shape = (rows, logits_at.shape[1], model.vocab_size)
        if self._logits is None or self._logits.shape != shape:
            self._logits = np.empty(shape, np.float32)
            self._binding.bind_output("logits", "cpu", 0, np.float32, list(shape), self._logits.ctypes.data)
        bound = (cache.values, rows)
        if not cache.shared or bound != self._bound_cache:  # concat: fresh presents every call
            cache.bind(self._binding, rows)
            self._bound_cache = bound
        model.session.run_with_iobinding(self._binding)
        if model.device_type != "cpu":
            self._binding.synchronize_outputs()
        if kept is not None:
            presents = [] if cache.shared else self._binding.get_outputs()[1:]  # bound order: logits, presents
            cache.advance(presents, mask, kept)
        return self._logits

    def _all_rows(self, kept: np.ndarray) -> np.ndarray:
        if len(kept) == self.cache.rows:
            return kept
        full = np.zeros(self.cache.rows, dtype=np.int64)
        full[: len(kept)] = kept
        return full

    def _bind_input(self, name: str, value: np.ndarray) -> None:
        bound = self._inputs.get(name)
        if bound is not None and bound.shape == value.shape and self.model.device_type == "cpu":
            np.copyto(bound, value, casting="unsafe")  # onnxruntime reads this memory in place
            return
        # (a CUDA session copies a host input to the device when it is bound: every call binds it again)
        bound = np.ascontiguousarray(value, dtype=np.int64)  # every run writes its inputs again: no copy needed
        self._inputs[name] = bound  # keeps the memory the binding points at alive
        self._binding.bind_cpu_input(name, bound)

    def feed(self, tokens: list[list[int]], segments: list[list[int]] | None = None,
             every_position: bool = False) -> np.ndarray:
        """Feed each cache row its tokens (ragged) in one call.

        Returns each row's last logits (rows, vocab), or with `every_position` (rows of equal length only) the
        logits after each fed token (rows, tokens, vocab).
        """
        cache = self.cache
        counts = np.array([len(t) for t in tokens], dtype=np.int64)
        width = int(counts.max())
        mask = cache.step_mask(counts)
        ids = np.zeros((cache.rows, width), dtype=np.int64)
        types = np.zeros((cache.rows, width), dtype=np.int64)
        positions = np.zeros((cache.rows, width), dtype=np.int64)
        for b, row in enumerate(tokens):
            n = len(row)
            span = slice(0, n) if cache.shared else slice(width - n, width)  # right- or left-padded
            ids[b, span] = row
            positions[b, span] = cache.lengths[b] + np.arange(n)
            if segments is not None:
                types[b, span] = segments[b]
        if every_position:
            if (counts != width).any():
                raise ValueError("every_position needs the same number of tokens in every row")
            wanted = np.broadcast_to(np.arange(width), (cache.rows, width))
        else:
            wanted = (counts - 1 if cache.shared else np.full(cache.rows, width - 1))[:, None]
        logits = self.run(ids, positions, mask, wanted, types if segments is not None else None, counts)
        return logits if every_position else logits[:, 0]

    def verify(self, tokens: list[list[int]], segments, active: np.ndarray) -> np.ndarray:
        """Feed each of the first len(tokens) rows a ragged run (its last chosen token, then draft tokens) in one call.

        `segments` gives each row's run one segment id, or one per token (a list of runs like `tokens`), or is None.

        Returns the logits after every fed token, (rows, longest run, vocab); a shorter run's later columns repeat its
        last. Rows not `active` are fed to fill the batch and keep nothing. Every fed token is kept: the caller rolls
        back the drafts it does not accept (`KVCache.rollback`).
        """
        cache = self.cache
        rows = len(tokens)
        counts = np.ones(cache.rows, dtype=np.int64)
        counts[:rows] = [len(run) for run in tokens]
        kept = np.zeros(cache.rows, dtype=np.int64)
        kept[:rows] = counts[:rows] * active
        width = int(counts[:rows].max())
        mask = cache.step_mask(counts, kept)[:rows]
        ids, positions, types, wanted = (np.zeros((rows, width), dtype=np.int64) for _ in range(4))
        for b, run in enumerate(tokens):
            n = len(run)
            start = 0 if cache.shared else width - n  # right- or left-padded
            ids[b, start : start + n] = run
            positions[b, start : start + n] = cache.lengths[b] + np.arange(n)
            types[b, start : start + n] = 0 if segments is None else segments[b]
            wanted[b] = start + np.minimum(np.arange(width), n - 1)
        return self.run(ids, positions, mask, wanted, None if segments is None else types, kept[:rows])

    def decode(self, tokens: np.ndarray, segments: np.ndarray | None = None,
               active: np.ndarray | None = None) -> np.ndarray:
        """Feed one token to each of the first len(tokens) rows; rows not `active` are fed to fill the batch and
        keep nothing. Returns (rows, vocab) logits, valid until the next call.
        """
        cache = self.cache
        rows = len(tokens)
        kept = self._one_each[:rows] if active is None else active.astype(np.int64)
        mask = cache.step_mask(self._one_each, self._all_rows(kept))[:rows]
        ids = np.asarray(tokens, dtype=np.int64)[:, None]
        positions = cache.lengths[:rows, None]
        types = None if segments is None else np.asarray(segments, dtype=np.int64)[:, None]
        return self.run(ids, positions, mask, np.zeros_like(ids), types, kept)[:, 0]
