"""Scoring candidate continuations of a kept prefix exactly, in a few forward calls instead of one per candidate.

A candidate's score is the sum of the log-probabilities of its tokens after the prefix. Candidates share their
first tokens (Xiangqi moves share files and ranks), so they are scored as a tree: the first token comes from the
prefix's own next-token logits, the rest from the model in one of three ways, by what the bundle's graph allows:
- query-key mask: every distinct proper prefix of a candidate is one token of a single row on the prefix's cache,
  and the mask lets each see the prefix and its own ancestors only; nothing is copied or kept;
- key mask, concat cache: one fork (copy) of the cache per distinct candidate-minus-last-token, all positions at once;
- shared buffer: one new token per row on forked caches, level by level (one call per token position).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .cache import ForkScratch
from .step import Step
from .types import Prefix


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class ContinuationScorer:
    """Scores candidates after prefixes of one model; keeps fork memory between calls."""

    def __init__(self, model) -> None:
        self.model = model
        self._scratch = ForkScratch()

    def __call__(self, prefix: Prefix, candidates: np.ndarray) -> np.ndarray:
        """(n, length) candidate token ids -> (n,) summed log-probabilities after `prefix`."""
        if not isinstance(prefix, Prefix) or prefix.cache.model is not self.model:
            raise InputError(f"prefix must be a Prefix from this model's prefill(), got {type(prefix).__name__}")
        candidates = np.asarray(candidates, dtype=np.int64)
        if len(prefix.token_ids) + candidates.shape[1] - 1 > self.model.max_positions:  # the last token is not fed
            raise InputError(f"a prefix of {len(prefix.token_ids)} tokens and candidates of {candidates.shape[1]} "
                             f"leave the model's {self.model.max_positions} positions")
        scores = log_softmax(prefix.logits)[candidates[:, 0]]
        if candidates.shape[1] == 1:
            return scores
        if self.model.query_key_mask:
            return scores + self._tree(prefix, candidates)
        if prefix.cache.shared:
            return scores + self._levels(prefix, candidates)
        return scores + self._forks(prefix, candidates)

    def _tree(self, prefix: Prefix, candidates: np.ndarray) -> np.ndarray:
        """Every distinct proper prefix of the candidates as one row of tokens under a tree mask: one call."""
        length = candidates.shape[1]
        levels, parent, base = [], np.zeros(len(candidates), dtype=np.int64), int(candidates.max()) + 1
        for depth in range(1, length):  # a node is (its parent node, its last token): one integer key, kept small
            _, first, inverse = np.unique(parent * base + candidates[:, depth - 1], return_index=True,
                                          return_inverse=True)
            levels.append((candidates[first, :depth], inverse))
            parent = inverse
        first = np.cumsum([0] + [len(nodes) for nodes, _ in levels])  # index of each level's first node
        node = [first[d] + inverse.reshape(-1) for d, (_, inverse) in enumerate(levels)]  # per candidate, per level
        count, cache = int(first[-1]), prefix.cache
        past = cache.mask.shape[1]
        ids = np.concatenate([nodes[:, -1] for nodes, _ in levels])[None]
        positions = np.concatenate([np.full(len(nodes), cache.lengths[0] + d) for d, (nodes, _) in enumerate(levels)])
        mask = np.zeros((1, count, past + count), dtype=np.int64)
        mask[0, :, :past] = cache.mask[0]
        mask[0, np.arange(count), past + np.arange(count)] = 1  # itself
        for depth in range(1, len(levels)):
            for ancestor in range(depth):
                mask[0, node[depth], past + node[ancestor]] = 1
        logits = Step(self.model, cache).run(ids, positions[None], mask, np.arange(count)[None], None, kept=None)
        logprobs = log_softmax(logits[0])
        return sum(logprobs[node[level - 1], candidates[:, level]] for level in range(1, length))

    def _forks(self, prefix: Prefix, candidates: np.ndarray) -> np.ndarray:
        """One fork per distinct candidate-minus-last-token, fed all its tokens at once."""
        nodes, node_of = np.unique(candidates[:, :-1], axis=0, return_inverse=True)
        cache = prefix.cache.take(np.zeros(len(nodes), dtype=np.int64), capacity=prefix.cache.capacity + len(nodes[0]),
                                  scratch=self._scratch)
        logprobs = log_softmax(Step(self.model, cache).feed(nodes.tolist(), every_position=True))
        node_of = node_of.reshape(-1)
        return sum(logprobs[node_of, level - 1, candidates[:, level]] for level in range(1, candidates.shape[1]))

    def _levels(self, prefix: Prefix, candidates: np.ndarray) -> np.ndarray:
        """One call per token position, each fork holding one more token."""
        scores = np.zeros(len(candidates))
        cache, row_of = prefix.cache, np.zeros(len(candidates), dtype=np.int64)
        room = len(prefix.token_ids) + candidates.shape[1] - 1  # the forks only ever hold the candidates' prefixes
        for level in range(1, candidates.shape[1]):
            nodes, first, node_of = np.unique(candidates[:, :level], axis=0, return_index=True, return_inverse=True)
            cache = cache.take(row_of[first], capacity=room)
            logprobs = log_softmax(Step(self.model, cache).feed([[int(n[-1])] for n in nodes]))
            node_of = node_of.reshape(-1)
            scores += logprobs[node_of, candidates[:, level]]
            row_of = node_of
        return scores
