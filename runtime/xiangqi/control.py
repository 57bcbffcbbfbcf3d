"""Which squares each side controls: what the runtime knows of a position beyond its pieces, for the move model.

A side controls a square when one of its pieces could capture on it were an enemy piece there (so it attacks the
enemy pieces it controls and defends its own): rooks along open lines, cannons past exactly one screen, horses whose
leg is free, elephants whose eye is free, and advisors, kings and pawns by their steps. The model reads, for each
square of its prompt, how many pieces of the side to move and of the other side control it (0, 1, 2 or more each),
as the prompt token's segment: a free capture or a hanging piece is then one square's token, not a geometry puzzle.
"""

from __future__ import annotations

from collections.abc import Iterator

from .tables import (
    ADVISOR,
    ADVISOR_MOVES,
    CANNON,
    ELEPHANT,
    ELEPHANT_MOVES,
    HORSE,
    HORSE_MOVES,
    KING_MOVES,
    PAWN,
    PAWN_MOVES,
    RAYS,
    ROOK,
    SQUARES,
)

CONTROL_SEGMENTS = 10  # segment 0: tokens that are not squares; 1 + 3 * own + other: a square (counts capped at 2)


def controls(squares: list[int], side: int) -> Iterator[tuple[int, int]]:
    """(square, piece kind) for each square each of `side`'s pieces controls."""
    for s in range(SQUARES):
        kind = squares[s] * side
        if kind > 0:
            for t in piece_controls(squares, s, kind, side):
                yield t, kind


def piece_controls(squares: list[int], s: int, kind: int, side: int) -> Iterator[int]:
    """The squares that `side`'s piece of `kind` on square `s` controls."""
    if kind == ROOK:
        for ray in RAYS[s]:
            for t in ray:
                yield t
                if squares[t]:
                    break
    elif kind == CANNON:
        for ray in RAYS[s]:
            screened = False
            for t in ray:
                if screened:
                    yield t
                    if squares[t]:
                        break
                elif squares[t]:
                    screened = True
    elif kind == HORSE:
        for t, leg in HORSE_MOVES[s]:
            if squares[leg] == 0:
                yield t
    elif kind == ELEPHANT:
        for t, eye in ELEPHANT_MOVES[s]:
            if squares[eye] == 0:
                yield t
    else:
        yield from PAWN_MOVES[side][s] if kind == PAWN else ADVISOR_MOVES[s] if kind == ADVISOR else KING_MOVES[s]


def control_segments(own: list[int], other: list[int]) -> list[int]:
    """The segment of each square of a board seen from the side to move (`tokens.oriented_squares`: its pieces
    positive, moving up the board as red's do) from how many pieces of the side to move and of the other side control
    it (`features.controllers`): 1 + 3 * min(own control, 2) + min(other side's control, 2)."""
    return [1 + 3 * min(a, 2) + min(b, 2) for a, b in zip(own, other, strict=True)]
