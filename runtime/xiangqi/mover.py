"""Move choice with the Xiangqi GPT: every legal move scored exactly, in a few forward calls.

A move's score is the sum of the log-probabilities of its 4 ICCS characters after the game so far (the seed's
definition). Instead of re-running the game once per candidate, the legal moves are scored as a tree: their
first characters come from the game's own next-token logits, and the rest from one more forward call, in one of
three ways by what the bundle's graph allows:
- query-key mask (the shipped bundle): every distinct 1-, 2- and 3-character prefix is one token of a single row
  on the game's cache, and the mask lets each see the game and its own ancestors only. No cache is copied;
- key mask, concatenated cache: one row per distinct 3-character prefix, each a fork (copy) of the game's cache;
- shared buffer (GroupQueryAttention): one new token per row on a shared past, so level by level: three calls.
The game's cache is kept across turns and only extended by the new moves. Output is legal by construction: only
legal moves are ever scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..decoder import Prefix, feed_tokens
from ..errors import InputError
from ..kv_cache import ForkScratch
from .board import Board
from .tokens import START, TOKEN_ID, encode_moves


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass
class ScoredMove:
    move: str
    logprob: float  # sum of the 4 character log-probabilities
    probability: float  # softmax of logprob over the legal moves


class MoveModel:
    """A loaded Xiangqi bundle plus the kept cache of the game being played."""

    def __init__(self, model) -> None:
        if model.manifest["task"] != "xiangqi":
            raise InputError(f"bundle task is {model.manifest['task']!r}, not 'xiangqi'")
        self.model = model
        self._prefix: Prefix | None = None
        self._scratch = ForkScratch()

    def _context(self, moves: list[str]) -> list[int]:
        """Tokens for the game so far; over-long games keep their most recent moves that fit."""
        tokens = encode_moves(moves)
        room = self.model.max_positions - 4
        if len(tokens) > room:
            keep = (room - 1) // 4
            tokens = [START, *tokens[len(tokens) - 4 * keep :]]
        return tokens

    def _game_prefix(self, tokens: list[int]) -> Prefix:
        """The game's cache, reusing the kept one when the game only grew since."""
        kept = self._prefix
        if kept is not None and tokens[: len(kept.token_ids)] == kept.token_ids:
            if len(tokens) > len(kept.token_ids):
                kept = self.model.prefill(tokens[len(kept.token_ids) :], prefix=kept)
        else:
            kept = self.model.prefill(tokens)
        self._prefix = kept
        return kept

    def score(self, board: Board) -> list[ScoredMove]:
        """Every legal move with its exact sequence score, best first."""
        moves = board.legal_moves()
        if not moves:
            raise InputError(f"no legal moves: the game is over ({board.outcome()})")
        prefix = self._game_prefix(self._context(board.move_stack))
        chars = np.array([[TOKEN_ID[c] for c in move] for move in moves])
        scores = log_softmax(prefix.logits)[chars[:, 0]]
        if self.model.query_key_mask:
            scores = scores + self._tree(prefix, chars)
        elif prefix.cache.shared:
            scores = scores + self._levels(prefix, chars)
        else:
            nodes, node_of_move = np.unique(chars[:, :3], axis=0, return_inverse=True)
            cache = prefix.cache.take(np.zeros(len(nodes), dtype=np.int64), scratch=self._scratch)
            logprobs = log_softmax(feed_tokens(self.model, cache, nodes.tolist(), every_position=True))
            node_of_move = node_of_move.reshape(-1)
            for level in range(1, 4):
                scores = scores + logprobs[node_of_move, level - 1, chars[:, level]]
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        order = np.argsort(-scores, kind="stable")
        return [ScoredMove(moves[i], float(scores[i]), float(probs[i])) for i in order]

    def _tree(self, prefix: Prefix, chars: np.ndarray) -> np.ndarray:
        """Characters 2-4 of each move from one call: the move tree's nodes as one row under a tree mask."""
        levels = [np.unique(chars[:, :depth], axis=0, return_inverse=True) for depth in (1, 2, 3)]
        first = np.cumsum([0] + [len(nodes) for nodes, _ in levels])  # index of each level's first node
        node = [first[d] + inverse.reshape(-1) for d, (_, inverse) in enumerate(levels)]  # per move, per level
        count, cache = int(first[-1]), prefix.cache
        past = cache.mask.shape[1]
        ids = np.concatenate([nodes[:, -1] for nodes, _ in levels])[None]
        positions = np.concatenate([np.full(len(nodes), cache.lengths[0] + d) for d, (nodes, _) in enumerate(levels)])
        mask = np.zeros((1, count, past + count), dtype=np.int64)
        mask[0, :, :past] = cache.mask[0]
        mask[0, np.arange(count), past + np.arange(count)] = 1  # itself
        for depth in range(1, 3):
            for ancestor in range(depth):
                mask[0, node[depth], past + node[ancestor]] = 1
        wanted = np.arange(count)[None]
        logits, _ = self.model.forward(ids, positions[None], mask, wanted, np.zeros_like(ids), cache)
        logprobs = log_softmax(logits[0])
        return sum(logprobs[node[level - 1], chars[:, level]] for level in range(1, 4))

    def _levels(self, prefix: Prefix, chars: np.ndarray) -> np.ndarray:
        """Characters 2-4 of each move, one call per level, each fork holding one more character."""
        scores = np.zeros(len(chars))
        cache, row_of_move = prefix.cache, np.zeros(len(chars), dtype=np.int64)
        room = len(prefix.token_ids) + 3  # the forks only ever hold the game and 3 more characters
        for level in range(1, 4):
            nodes, first, node_of_move = np.unique(chars[:, :level], axis=0, return_index=True, return_inverse=True)
            cache = cache.take(row_of_move[first], capacity=room)
            logprobs = log_softmax(feed_tokens(self.model, cache, [[int(n[-1])] for n in nodes]))
            node_of_move = node_of_move.reshape(-1)
            scores += logprobs[node_of_move, chars[:, level]]
            row_of_move = node_of_move
        return scores

    def best(self, board: Board) -> ScoredMove:
        return self.score(board)[0]

    def sample(self, board: Board, temperature: float = 1.0, rng: np.random.Generator | None = None) -> ScoredMove:
        """A legal move drawn with probability proportional to exp(score / temperature)."""
        if not temperature > 0:
            raise InputError(f"temperature must be > 0, got {temperature!r}")
        scored = self.score(board)
        logits = np.array([s.logprob for s in scored]) / temperature
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return scored[int((rng or np.random.default_rng()).choice(len(scored), p=probs))]


def rerun_scores(model, board: Board) -> dict[str, float]:
    """The seed's method: one full forward pass per legal move. The reference the tree scorer must equal."""
    context = encode_moves(board.move_stack)
    scores = {}
    for move in board.legal_moves():
        ids = np.array([context + [TOKEN_ID[c] for c in move]])
        logprobs = log_softmax(model.logits(ids)[0, -5:-1])
        scores[move] = float(sum(logprobs[i, TOKEN_ID[c]] for i, c in enumerate(move)))
    return scores
