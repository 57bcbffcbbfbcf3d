"""Board geometry and precomputed move tables.

Squares are numbered ``rank * 9 + file`` (rank 0 is red's back rank, file 0 is
file ``a``). Pieces are small ints, positive for red and negative for black, so
"does this piece belong to the side to move" is one multiplication. Every
table is built once at import so move generation never does coordinate maths.
"""

from __future__ import annotations

FILES = 9
RANKS = 10
SQUARES = FILES * RANKS

RED = 1
BLACK = -1

KING, ADVISOR, ELEPHANT, HORSE, ROOK, CANNON, PAWN = range(1, 8)
PIECE_NAMES = {
    KING: "king",
    ADVISOR: "advisor",
    ELEPHANT: "elephant",
    HORSE: "horse",
    ROOK: "rook",
    CANNON: "cannon",
    PAWN: "pawn",
}
# Most of each piece type a side can have: there is no promotion in Xiangqi.
MAX_COUNT = {KING: 1, ADVISOR: 2, ELEPHANT: 2, HORSE: 2, ROOK: 2, CANNON: 2, PAWN: 5}


def side_name(side: int) -> str:
    return "red" if side == RED else "black"


def square(file: int, rank: int) -> int:
    return rank * FILES + file


def file_of(sq: int) -> int:
    return sq % FILES


def rank_of(sq: int) -> int:
    return sq // FILES


def _on_board(file: int, rank: int) -> bool:
    return 0 <= file < FILES and 0 <= rank < RANKS


def _in_palace(file: int, rank: int) -> bool:
    return 3 <= file <= 5 and (0 <= rank <= 2 or 7 <= rank <= 9)


def _own_half(rank: int, side: int) -> bool:
    return rank <= 4 if side == RED else rank >= 5


ORTHO = ((1, 0), (-1, 0), (0, 1), (0, -1))
DIAG = ((1, 1), (1, -1), (-1, 1), (-1, -1))
# Horse jumps as (file step, rank step, leg file step, leg rank step).
HORSE_JUMPS = tuple(
    (df, dr, (df // 2) if abs(df) == 2 else 0, (dr // 2) if abs(dr) == 2 else 0)
    for df, dr in ((1, 2), (-1, 2), (1, -2), (-1, -2), (2, 1), (-2, 1), (2, -1), (-2, -1))
)


def _build() -> dict[str, list]:
    rays: list[tuple[tuple[int, ...], ...]] = []
    king: list[tuple[int, ...]] = []
    advisor: list[tuple[int, ...]] = []
    elephant: list[tuple[tuple[int, int], ...]] = []
    horse: list[tuple[tuple[int, int], ...]] = []
    horse_attackers: list[tuple[tuple[int, int], ...]] = []
    pawn_red: list[tuple[int, ...]] = []
    pawn_black: list[tuple[int, ...]] = []
    for sq in range(SQUARES):
        f, r = file_of(sq), rank_of(sq)
        ray_set = []
        for df, dr in ORTHO:
            ray = []
            nf, nr = f + df, r + dr
            while _on_board(nf, nr):
                ray.append(square(nf, nr))
                nf, nr = nf + df, nr + dr
            ray_set.append(tuple(ray))
        rays.append(tuple(ray_set))
        king.append(tuple(square(f + df, r + dr) for df, dr in ORTHO if _in_palace(f + df, r + dr)))
        advisor.append(tuple(square(f + df, r + dr) for df, dr in DIAG if _in_palace(f + df, r + dr)))
        side = RED if r <= 4 else BLACK
        elephant.append(tuple(
            (square(f + 2 * df, r + 2 * dr), square(f + df, r + dr))
            for df, dr in DIAG
            if _on_board(f + 2 * df, r + 2 * dr) and _own_half(r + 2 * dr, side)
        ))
        horse.append(tuple(
            (square(f + df, r + dr), square(f + lf, r + lr))
            for df, dr, lf, lr in HORSE_JUMPS
            if _on_board(f + df, r + dr)
        ))
        # A horse on sq - jump attacks sq when its leg (next to the horse) is empty.
        horse_attackers.append(tuple(
            (square(f - df, r - dr), square(f - df + lf, r - dr + lr))
            for df, dr, lf, lr in HORSE_JUMPS
            if _on_board(f - df, r - dr)
        ))
        for pawn, side, forward in ((pawn_red, RED, 1), (pawn_black, BLACK, -1)):
            steps = [(0, forward)]
            if not _own_half(r, side):
                steps += [(1, 0), (-1, 0)]
            pawn.append(tuple(square(f + df, r + dr) for df, dr in steps if _on_board(f + df, r + dr)))
    return {
        "rays": rays,
        "king": king,
        "advisor": advisor,
        "elephant": elephant,
        "horse": horse,
        "horse_attackers": horse_attackers,
        "pawn": {RED: pawn_red, BLACK: pawn_black},
    }


_T = _build()
RAYS: list[tuple[tuple[int, ...], ...]] = _T["rays"]
KING_MOVES: list[tuple[int, ...]] = _T["king"]
ADVISOR_MOVES: list[tuple[int, ...]] = _T["advisor"]
ELEPHANT_MOVES: list[tuple[tuple[int, int], ...]] = _T["elephant"]
HORSE_MOVES: list[tuple[tuple[int, int], ...]] = _T["horse"]
HORSE_ATTACKERS: list[tuple[tuple[int, int], ...]] = _T["horse_attackers"]
PAWN_MOVES: dict[int, list[tuple[int, ...]]] = _T["pawn"]

# Squares a piece of each kind may ever stand on (used to reject impossible FENs).
PALACE = {RED: frozenset(square(f, r) for f in range(3, 6) for r in range(3)),
          BLACK: frozenset(square(f, r) for f in range(3, 6) for r in range(7, 10))}
ADVISOR_SQUARES = {
    side: frozenset(square(f, r) for f, r in ((3, b), (5, b), (4, b + d), (3, b + 2 * d), (5, b + 2 * d)))
    for side, b, d in ((RED, 0, 1), (BLACK, 9, -1))
}
ELEPHANT_SQUARES = {
    side: frozenset(square(f, r) for f, r in ((2, b), (6, b), (0, b + 2 * d), (4, b + 2 * d),
                                             (8, b + 2 * d), (2, b + 4 * d), (6, b + 4 * d)))
    for side, b, d in ((RED, 0, 1), (BLACK, 9, -1))
}
PAWN_SQUARES = {
    side: frozenset(sq for sq in range(SQUARES)
                    if (rank_of(sq) >= 5 if side == RED else rank_of(sq) <= 4)
                    or (rank_of(sq) in ((3, 4) if side == RED else (5, 6)) and file_of(sq) % 2 == 0))
    for side in (RED, BLACK)
}


def _pawn_attackers(side: int) -> list[tuple[int, ...]]:
    """For each target square, the squares from which a pawn of `side` attacks it."""
    attackers: list[list[int]] = [[] for _ in range(SQUARES)]
    for sq, targets in enumerate(PAWN_MOVES[side]):
        for t in targets:
            attackers[t].append(sq)
    return [tuple(a) for a in attackers]


PAWN_ATTACKERS = {RED: _pawn_attackers(RED), BLACK: _pawn_attackers(BLACK)}

# A non-king move made while not in check can only expose the own king if it leaves a
# square on the king's rank/file or a horse-leg square (diagonal neighbour), or lands on
# the king's rank/file (a new cannon screen). Other moves skip the make/test/unmake check.
def _sensitivity() -> tuple[list[bytes], list[bytes]]:
    from_sens, to_sens = [], []
    for k in range(SQUARES):
        line = [int(file_of(s) == file_of(k) or rank_of(s) == rank_of(k)) for s in range(SQUARES)]
        to_sens.append(bytes(line))
        from_sens.append(bytes(
            int(line[s] or (abs(file_of(s) - file_of(k)) == 1 and abs(rank_of(s) - rank_of(k)) == 1))
            for s in range(SQUARES)
        ))
    return from_sens, to_sens


FROM_SENSITIVE, TO_SENSITIVE = _sensitivity()
