"""Scoring candidate continuations of a kept prefix exactly, in a few forward calls instead of one per candidate.

A candidate's score is the sum of the log-probabilities of its tokens after the prefix. Candidates share their
first tokens (Xiangqi moves share files and ranks), so they are scored as a tree: the first token comes from the
prefix's own next-token logits, the rest from the model in one of three ways, by what the bundle's graph allows:
- query-key mask: every distinct proper prefix of a candidate is one token of a single row on the prefix's cache,
  and the mask lets each see the prefix and its own ancestors only; nothing is copied or kept (`after_prompts`:
  prompts that need not be kept go in the same call, one batch row each, their tokens seeing each other as a
  prefill's would);
- key mask, concat cache: one fork (copy) of the cache per distinct candidate-minus-last-token, all positions at once;
- shared buffer: one new token per row on forked caches, level by level (one call per token position).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from .cache import ForkScratch, KVCache
from .step import Step, query_key_mask
from .types import Prefix


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


class CandidateTree:
    """The distinct proper prefixes of (n, length) candidates as tree nodes, level by level: each node is one token
    (the last of its prefix), fed after whatever the candidates follow, seeing its ancestors and itself only."""

    def __init__(self, candidates: np.ndarray) -> None:
        length = candidates.shape[1]
        levels, parent, base = [], np.zeros(len(candidates), dtype=np.int64), int(candidates.max()) + 1
        for depth in range(1, length):  # a node is (its parent node, its last token): one integer key, kept small
            _, first, inverse = np.unique(parent * base + candidates[:, depth - 1], return_index=True,
                                          return_inverse=True)
            levels.append((candidates[first, depth - 1], inverse.reshape(-1)))
            parent = inverse
        first = np.cumsum([0] + [len(tokens) for tokens, _ in levels])  # index of each level's first node
        self.candidates = candidates
        self.node = [first[d] + inverse for d, (_, inverse) in enumerate(levels)]  # per level: each candidate's node
        self.count = int(first[-1])
        self.ids = np.concatenate([tokens for tokens, _ in levels])
        self.depths = np.concatenate([np.full(len(tokens), d) for d, (tokens, _) in enumerate(levels)])
        self.mask = np.eye(self.count, dtype=np.int64)  # (node, node): each sees itself and its ancestors
        for depth in range(1, len(levels)):
            for ancestor in range(depth):
                self.mask[self.node[depth], self.node[ancestor]] = 1

    def summed(self, logprobs: np.ndarray) -> np.ndarray:
        """Each candidate's summed log-probabilities of its tokens after the first, from (count, vocab) log-probs at
        the nodes."""
        return sum(logprobs[self.node[level - 1], self.candidates[:, level]]
                   for level in range(1, self.candidates.shape[1]))


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
        self._check_room("prefix", len(prefix.token_ids), candidates)
        scores = log_softmax(prefix.logits)[candidates[:, 0]]
        if candidates.shape[1] == 1:
            return scores
        if self.model.query_key_mask:
            return scores + self._tree(prefix, candidates)
        if prefix.cache.shared:
            return scores + self._levels(prefix, candidates)
        return scores + self._forks(prefix, candidates)

    def _check_room(self, what: str, length: int, candidates: np.ndarray) -> None:
        """Candidates after `length` tokens must fit the model's positions (their last token is never fed)."""
        if length + candidates.shape[1] - 1 > self.model.max_positions:
            raise InputError(f"a {what} of {length} tokens and candidates of {candidates.shape[1]} leave the model's "
                             f"{self.model.max_positions} positions")

    def _tree(self, prefix: Prefix, candidates: np.ndarray) -> np.ndarray:
        """Every distinct proper prefix of the candidates as one row of tokens under a tree mask: one call."""
        tree = CandidateTree(candidates)
        cache = prefix.cache
        past = cache.mask.shape[1]
        mask = np.zeros((1, tree.count, past + tree.count), dtype=np.int64)
        mask[0, :, :past] = cache.mask[0]
        mask[0, :, past:] = tree.mask
        positions = cache.lengths[0] + tree.depths
        logits = Step(self.model, cache).run(tree.ids[None], positions[None], mask, np.arange(tree.count)[None], None,
                                             kept=None)
        return tree.summed(log_softmax(logits[0]))

    def after_prompts(self, prompts: list[tuple[list[int], list[int]]], candidates: list[np.ndarray]) -> list[np.ndarray]:
        """Per row, (n, length) candidate token ids -> (n,) summed log-probabilities after a prompt that is not kept
        (checked ids and segments of equal length, see `generate.prompt_with_segments`): every row's prompt and the
        tree of its candidates in one call, the prompt's own mask (causal, or both ways over a bidirectional prefix)
        beside the tree's; a row with a smaller tree is padded with nodes that see its prompt only. Query-key bundles
        only; the saving over `prefill` then `__call__` is one call per row and the prompts' caches."""
        model, n = self.model, len(prompts[0][0])
        for row in candidates:
            self._check_room("prompt", n, row)
        trees = [CandidateTree(row) if row.shape[1] > 1 else None for row in candidates]
        count = max(tree.count if tree else 0 for tree in trees)
        mask = np.zeros((len(prompts), n + count, n + count), dtype=np.int64)
        mask[:, :n, :n] = query_key_mask(np.ones((1, n), dtype=np.int64), n, model.bidirectional_prefix)[0]
        mask[:, n:, :n] = 1
        feed = np.zeros((len(prompts), n + count), dtype=np.int64)
        positions = np.tile(np.concatenate([np.arange(n), np.full(count, n)]), (len(prompts), 1))
        types = np.zeros_like(feed)
        for row, ((ids, segments), tree) in enumerate(zip(prompts, trees)):
            feed[row, :n], types[row, :n] = ids, segments
            size = tree.count if tree else 0
            if tree:
                mask[row, n:n + size, n:n + size] = tree.mask
                feed[row, n:n + size] = tree.ids
                positions[row, n:n + size] = n + tree.depths
            mask[row, n + size:, n + size:] = np.eye(count - size, dtype=np.int64)  # padding: its prompt and itself
        logits = Step(model, KVCache(model, len(prompts), n)).run(
            feed, positions, mask, np.tile(np.arange(n - 1, n + count), (len(prompts), 1)), types, kept=None)
        scores = []
        for row, (tree, choices) in enumerate(zip(trees, candidates)):
            logprobs = log_softmax(logits[row])
            first = logprobs[0, choices[:, 0]]
            scores.append(first + tree.summed(logprobs[1:]) if tree else first)
        return scores

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
