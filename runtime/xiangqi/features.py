"""What the move model's prompt says about each square beyond its piece: its segment, by the manifest's
`square_features`.

- "control": how many pieces of each side control the square (`control.py`), segments 1-9.
- "control+checks": that, plus whether a legal move of the side to move from or to the square gives check (+9) or
  mates (+18), segments 1-27.
- "control+checks+threats": that, plus whether the piece on the square (either side's, not a king) is en prise (+27):
  attacked, and undefended or attacked by a piece worth less; segments 1-54.
- "control+checks+threats+attackers": that, plus the cheapest piece of the other side that controls the square
  (+54 times ATTACKER_CLASS: none, a pawn, advisor or elephant, a horse or cannon, a rook or the king): what a piece
  moved there risks, or what defends the other side's piece there; segments 1-216.
- "control+checks+threats+attackers+attacks": that, plus whether a legal move of the side to move from or to the
  square attacks, from where the piece lands, an enemy piece (not the king) that it did not attack before and that is
  undefended or worth more than it (+216; defence and values as in the position before the move): the threats a move
  makes, where "threats" says which pieces are threatened now; segments 1-432.
Each set's segments are a richer set's reduced modulo its own count of square segments (`coarser`), so the richest
set's segments, computed once per position, give every set's. All are facts of the rules, found by the same move
generator that keeps the model's output legal; which move to play stays the model's choice: it learns from the
engine's moves what a check, a mate or a piece en prise is worth, as it learns what control means. Segment 0 is
every token that is not a square (the start token and the move's characters).
"""

from __future__ import annotations

import numpy as np

from .board import Board
from .control import CONTROL_SEGMENTS, control_segments, controls, piece_controls
from .notation import parse_move
from .tables import (
    ADVISOR,
    BLACK,
    CANNON,
    ELEPHANT,
    HORSE,
    KING,
    PAWN,
    RED,
    ROOK,
    SQUARES,
)
from .tokens import oriented_squares, oriented_values

CHECK, MATE = 1, 2
LEVELS = CONTROL_SEGMENTS - 1  # segments per check level
SEGMENTS = {None: 0, "control": CONTROL_SEGMENTS, "control+checks": 1 + 3 * LEVELS,
            "control+checks+threats": 1 + 6 * LEVELS, "control+checks+threats+attackers": 1 + 24 * LEVELS,
            "control+checks+threats+attackers+attacks": 1 + 48 * LEVELS}
RICHEST = "control+checks+threats+attackers+attacks"
VALUE = {ADVISOR: 4, ELEPHANT: 4, HORSE: 8, ROOK: 18, CANNON: 9, PAWN: 2, KING: 1000}  # half pawns (king: never less)
ATTACKER_CLASS = {0: 0, 2: 1, 4: 1, 8: 2, 9: 2, 18: 3, 1000: 3}  # by the cheapest controller's VALUE (0: none)
RIVER = SQUARES // 2  # the first square of the other side's half, seen from red
FLIPPED = oriented_values(list(range(SQUARES)), BLACK)  # each square as black sees it (top to bottom)


def check_levels(board: Board) -> list[int]:
    """For each square (board order): MATE if a legal move from or to it mates, else CHECK if one gives check, else 0.
    An own piece's square says what its moves do; any other square what the moves landing on it do."""
    levels = [0] * SQUARES
    for move, mates in board.checking_moves().items():
        level, m = MATE if mates else CHECK, parse_move(move)
        for square in (m >> 7, m & 127):
            levels[square] = max(levels[square], level)
    return levels


def controllers(squares: list[int], side: int) -> tuple[list[int], list[int]]:
    """For each square, how many of `side`'s pieces control it and the VALUE of the cheapest of them (0: none), in
    one pass over `control.controls`."""
    counts, cheapest = [0] * SQUARES, [0] * SQUARES
    for square, kind in controls(squares, side):
        counts[square] += 1
        if not cheapest[square] or VALUE[kind] < cheapest[square]:
            cheapest[square] = VALUE[kind]
    return counts, cheapest


def worth(kind: int, square: int, owner: int) -> int:
    """A piece's VALUE on a square of a board seen from the side to move: a pawn across the river is worth 2."""
    return VALUE[kind] * (2 if kind == PAWN and (square >= RIVER) == (owner == RED) else 1)


def en_prise(oriented: list[int], cheapest: dict[int, list[int]]) -> list[int]:
    """1 for each piece but a king (either side's, on a board seen from the side to move) that its opponent attacks
    while it is undefended or worth more than the cheapest attacker; else 0. `cheapest` holds each side's cheapest
    controllers (`controllers`)."""
    flags = [0] * SQUARES
    for square, piece in enumerate(oriented):
        kind, owner = abs(piece), RED if piece > 0 else BLACK
        if not piece or kind == KING or not (attacker := cheapest[-owner][square]):
            continue
        flags[square] = int(not cheapest[owner][square] or attacker < worth(kind, square, owner))
    return flags


def attacking_moves(oriented: list[int], moves: list[int], defended: list[int]) -> list[int]:
    """1 for each square that a legal move (`moves`, seen from the side to move like `oriented`) leaves from or lands
    on while attacking, from its landing square, an enemy piece but the king that the moving piece did not attack
    before and that is undefended (`defended`: how many enemy pieces control each square) or worth more than it;
    else 0."""
    flags, before, board = [0] * SQUARES, {}, list(oriented)
    for m in moves:
        fr, to = m >> 7, m & 127
        if flags[fr] and flags[to]:
            continue
        kind = board[fr]
        if fr not in before:
            before[fr] = set(piece_controls(board, fr, kind, RED))
        captured, board[to], board[fr] = board[to], kind, 0
        for t in piece_controls(board, to, kind, RED):
            target = board[t]
            if (target < 0 and target != -KING and t not in before[fr]
                    and (not defended[t] or worth(-target, t, BLACK) > VALUE[kind])):
                flags[fr] = flags[to] = 1
                break
        board[fr], board[to] = kind, captured
    return flags


def feature_segments(oriented: list[int], features: str, levels: list[int] | None = None,
                     moves: list[int] | None = None) -> list[int]:
    """The 90 squares' segments under `features` (a key of SEGMENTS other than None) of a board seen from the side to
    move (`tokens.oriented_squares`), with its check levels seen the same way (`tokens.oriented_values`; read only
    when `features` has checks) and its legal moves seen the same way (`oriented_moves`; read only when it has
    attacks)."""
    parts = set(features.split("+"))
    (own, own_cheapest), (other, other_cheapest) = controllers(oriented, RED), controllers(oriented, BLACK)
    segments = control_segments(own, other)
    if "checks" in parts:
        segments = [segment + LEVELS * level for segment, level in zip(segments, levels, strict=True)]
    if "threats" in parts:
        flags = en_prise(oriented, {RED: own_cheapest, BLACK: other_cheapest})
        segments = [segment + 3 * LEVELS * flag for segment, flag in zip(segments, flags, strict=True)]
    if "attackers" in parts:
        segments = [segment + 6 * LEVELS * ATTACKER_CLASS[value]
                    for segment, value in zip(segments, other_cheapest, strict=True)]
    if "attacks" in parts:
        flags = attacking_moves(oriented, moves, other)
        segments = [segment + 24 * LEVELS * flag for segment, flag in zip(segments, flags, strict=True)]
    return segments


def oriented_moves(board: Board) -> list[int]:
    """The legal moves of the side to move as move integers (from << 7 | to) on the board seen from that side: the
    move generator's own integers, their squares flipped top to bottom for black; a new list, as the board caches its
    own."""
    if board.side != BLACK:
        return list(board._legal())
    return [FLIPPED[m >> 7] << 7 | FLIPPED[m & 127] for m in board._legal()]


def square_segments(board: Board, features: str) -> list[int]:
    """The 90 squares' segments of the position's prompt under `features` (a key of SEGMENTS other than None)."""
    levels = oriented_values(check_levels(board), board.side) if "checks" in features else None
    moves = oriented_moves(board) if "attacks" in features.split("+") else None
    return feature_segments(oriented_squares(board.squares, board.side), features, levels, moves)


def coarser(segments: np.ndarray, features: str) -> np.ndarray:
    """Square segments (>= 1) under the RICHEST feature set as they are under `features` (a key of SEGMENTS other
    than None): each added feature adds a multiple of the smaller set's count of square segments."""
    return (np.asarray(segments, dtype=np.int64) - 1) % (SEGMENTS[features] - 1) + 1
