"""Move choice with the Xiangqi GPT: every legal move scored exactly, in a few forward calls.

A move's score is the sum of the log-probabilities of its 4 ICCS characters after the game so far. The legal
moves are scored together as candidate continuations of the game's kept prefix (`CausalLM.score`: a tree of
shared characters, one or a few forward calls), and the game's prefix is kept across turns and only extended by
the new moves. Output is legal by construction: only legal moves are ever scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BundleError, InputError
from ..lm import Prefix
from ..lm.options import is_number
from .board import Board
from .tokens import START, TOKEN_ID, encode_moves


@dataclass
class ScoredMove:
    move: str
    logprob: float  # sum of the 4 character log-probabilities
    probability: float  # softmax of logprob over the legal moves


class MoveModel:
    """A loaded Xiangqi bundle plus the kept cache of the game being played."""

    def __init__(self, model) -> None:
        if model.manifest["task"] != "xiangqi":
            raise BundleError(f"moves need a bundle for task 'xiangqi'; this one is for task {model.manifest['task']!r}")
        self.model = model
        self._prefix: Prefix | None = None

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
        if not isinstance(board, Board):
            raise InputError(f"board must be a xiangqi Board, got {type(board).__name__}")
        moves = board.legal_moves()
        if not moves:
            raise InputError(f"no legal moves: the game is over ({board.outcome()})")
        prefix = self._game_prefix(self._context(board.move_stack))
        scores = self.model.score(prefix, np.array([[TOKEN_ID[c] for c in move] for move in moves]))
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        order = np.argsort(-scores, kind="stable")
        return [ScoredMove(moves[i], float(scores[i]), float(probs[i])) for i in order]

    def best(self, board: Board) -> ScoredMove:
        return self.score(board)[0]

    def sample(self, board: Board, temperature: float = 1.0, rng: np.random.Generator | None = None) -> ScoredMove:
        """A legal move drawn with probability proportional to exp(score / temperature)."""
        if not (is_number(temperature) and 0 < temperature < np.inf):
            raise InputError(f"temperature must be a finite number > 0, got {temperature!r}")
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise InputError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
        scored = self.score(board)
        logits = np.array([s.logprob for s in scored])
        probs = np.exp((logits - logits.max()) / temperature)  # shifted first: tiny temperatures stay finite
        probs /= probs.sum()
        return scored[int((rng or np.random.default_rng()).choice(len(scored), p=probs))]
