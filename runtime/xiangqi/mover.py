"""Move choice with the Xiangqi GPT: every legal move scored exactly, in one forward call.

The model reads the position's prompt (the board seen from the side to move, `tokens.board_tokens`, with each
square's segment, `features.py`, when the manifest names `square_features`, and its start token saying whether the
position is a repeat, when the bundle's vocabulary has `[SEEN]`). Its move head is one of two:
- 4 characters (a decoder bundle): a move's score is the sum of the log-probabilities of its 4 ICCS characters after
  the prompt. The prompt and the legal moves, its candidate continuations, run together (`CausalLM.score_prompt`:
  the moves as a tree of shared characters beside the prompt, one call with the query-key mask).
- square pairs (`square_pairs.SquarePairModel`): the prompt alone gives every (from, to) pair a logit; a move's score
  is its log-probability under the softmax over the legal moves' logits.
Xiangqi's rules are symmetric left to right; with `mirror=True` a move's score is the mean of its scores on
the position and on the mirrored position (a second batch row of the same call; a position that is its own mirror,
such as the start, is scored once). That helps a model trained on mirrored examples, which is symmetric only roughly;
the shipped model learnt the engine's own choices, which are not symmetric, and with it agrees with them a little less
often (benchmarks/README.md). Output is legal by construction: only legal moves are ever scored. The prompt holds
little history, so the rules, which see all of it, have the last word on repetitions: a move that would lose the game
at once (a perpetual check or chase) is ranked after every other move, whatever its score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bundle import square_pair_head
from ..errors import BundleError, InputError
from ..lm.options import is_number
from .board import REPETITION_COUNT, Board
from .features import SEGMENTS, square_segments
from .tokens import (
    HISTORYLESS_VOCAB,
    MIRRORED_SQUARE,
    MIRRORED_TOKEN,
    VOCAB,
    board_tokens,
    mirrored_prompt,
    move_tokens,
    oriented_move,
    square_pair,
)


@dataclass
class ScoredMove:
    move: str
    logprob: float  # sum of the 4 character log-probabilities, or the log-probability among the legal square pairs
    probability: float  # softmax of logprob over the legal moves


class MoveModel:
    """A loaded Xiangqi bundle that scores the legal moves of a position."""

    def __init__(self, model, mirror: bool = False) -> None:
        manifest = model.manifest
        if manifest["task"] != "xiangqi":
            raise BundleError(f"moves need a bundle for task 'xiangqi'; this one is for task {manifest['task']!r}")
        features, segments = manifest.get("square_features"), manifest["model"].get("n_segments") or 0
        if manifest.get("input") != "board":
            why = f"manifest 'input' is {manifest.get('input')!r}, not 'board'"
        elif manifest.get("vocab") not in (VOCAB, HISTORYLESS_VOCAB):
            why = f"manifest 'vocab' is not the board prompt's {len(VOCAB)} tokens (or the first {len(VOCAB) - 1})"
        elif not (features is None or isinstance(features, str)) or features not in SEGMENTS:
            why = f"manifest 'square_features' is {features!r}, not one of {sorted(filter(None, SEGMENTS))} or absent"
        elif segments != SEGMENTS[features]:
            why = (f"model.n_segments is {segments}: square_features {features!r} needs model.n_segments "
                   f"{SEGMENTS[features]}")
        else:
            why = None
        if why:
            raise BundleError(f"bundle {model.folder}: its model does not read the board prompt of this runtime "
                              f"({why}); retrain it with python -m edgeinfer.export.train_xiangqi")
        self.model = model
        self.square_pairs = square_pair_head(manifest)  # the move head: square pairs, else 4 characters
        self.features = features  # what each square's prompt token carries as its segment (None: nothing)
        self.reads_repeats = manifest["vocab"] == VOCAB  # a repeated position starts with [SEEN]
        if not isinstance(mirror, bool):
            raise InputError(f"mirror must be True or False, got {mirror!r}")
        self.mirror = mirror  # score each move as the mean over the position and its left-right mirror

    def prompt(self, board: Board) -> tuple[list[int], list[int] | None]:
        """The position's prompt as this bundle reads it: its tokens, and their segments (None without features)."""
        segments = [0, *square_segments(board, self.features)] if self.features else None
        return board_tokens(board.squares, board.side, self.reads_repeats and board.repetitions() > 1), segments

    def score(self, board: Board) -> list[ScoredMove]:
        """Every legal move with its exact sequence score, best first."""
        if not isinstance(board, Board):
            raise InputError(f"board must be a xiangqi Board, got {type(board).__name__}")
        moves = board.legal_moves()
        if not moves:
            raise InputError(f"no legal moves: the game is over ({board.outcome()})")
        oriented = [oriented_move(move, board.side) for move in moves]
        scores = self._pair_scores(board, oriented) if self.square_pairs else self._character_scores(board, oriented)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        losing = losing_by_repetition(board, moves)
        order = sorted(range(len(moves)), key=lambda i: (moves[i] in losing, -scores[i]))
        return [ScoredMove(moves[i], float(scores[i]), float(probs[i])) for i in order]

    def _views(self, board: Board) -> list[tuple[list[int], list[int] | None]]:
        """The prompts a position is scored on, with their segments: its own, and its mirror's with `mirror`. A position
        that is its own mirror (the start) has one view: averaging would only tie mirror-image moves (its square
        features are the mirror's too, being facts of the rules)."""
        tokens, segments = self.prompt(board)
        if self.mirror and (mirrored := mirrored_prompt(tokens)) != tokens:
            return [(tokens, segments), (mirrored, segments and mirrored_prompt(segments))]
        return [(tokens, segments)]

    def _character_scores(self, board: Board, oriented: list[str]) -> np.ndarray:
        views = self._views(board)
        candidates = np.array([move_tokens(move) for move in oriented])
        prompts, segments = zip(*views, strict=True)
        if len(views) == 1:
            return self.model.score_prompt(prompts[0], candidates, segments[0])
        scores = self.model.score_prompts(list(prompts), [candidates, np.take(MIRRORED_TOKEN, candidates)],
                                          segments[0] and list(segments))
        return (scores[0] + scores[1]) / 2

    def _pair_scores(self, board: Board, oriented: list[str]) -> np.ndarray:
        views = self._views(board)
        pairs = np.array([square_pair(move) for move in oriented])
        if len(views) == 2:  # the mirror's view reads the mirrored moves' pairs
            origins, targets = np.divmod(pairs, len(MIRRORED_SQUARE))
            pairs = np.stack([pairs, np.take(MIRRORED_SQUARE, origins) * len(MIRRORED_SQUARE)
                              + np.take(MIRRORED_SQUARE, targets)])
        prompts, segments = zip(*views, strict=True)
        logits = self.model.move_logits(np.array(prompts), segments[0] and np.array(segments))
        legal = np.take_along_axis(logits.reshape(len(views), -1), pairs.reshape(len(views), -1), 1).astype(np.float64)
        legal -= legal.max(-1, keepdims=True)
        legal -= np.log(np.exp(legal).sum(-1, keepdims=True))  # log-softmax over the legal moves, per view
        return legal.mean(0)

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


def losing_by_repetition(board: Board, moves: list[str]) -> set[str]:
    """The moves after which the repetition rules end the game as a loss for the side that played them: at once, or
    by a reply of the opponent that completes the repetition (the side that checked, or chased, on every move of the
    cycle loses, whoever's move makes the position occur the 3rd time)."""
    mover, losing = board.turn, set()
    if not (board.may_repeat(1) or board.may_repeat(2)):
        return losing
    for move in moves:
        board.push(move)
        if _lost(board, mover) or board.may_repeat(1) and any(_lost_after(board, reply, mover)
                                                              for reply in board.legal_moves()):
            losing.add(move)
        board.pop()
    return losing


def _lost(board: Board, side: str) -> bool:
    if board.repetitions() < REPETITION_COUNT:
        return False
    outcome = board.outcome()
    return outcome is not None and outcome.winner not in (None, side)


def _lost_after(board: Board, move: str, side: str) -> bool:
    board.push(move)
    try:
        return _lost(board, side)
    finally:
        board.pop()
