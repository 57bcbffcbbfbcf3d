"""Which pieces a move chases, as fairy-stockfish decides it for its Xiangqi chasing rule.

A repeated position ends the game in a loss for a side that chased the same enemy piece on every
one of its moves in the cycle (see `Board.outcome`). Whether a move "chases" follows
``Position::chased()`` of Fairy-Stockfish (variant "xiangqi", AXF-style chasing) step by step, quirks
included, because the point is to agree with it on every game: a move chases an enemy piece that it
newly attacks (directly or by uncovering an attack) when the piece is worth more than the attacker or is
unprotected, never a king or a pawn on its own side of the river; a move that pins a defender also chases
what that defender protected, and a move that uncovers a check chases what the uncovering piece attacks.

This runs only once a position has repeated, so it favours being a readable transcription over speed.
Squares are sets as int bitmasks (bit ``rank * 9 + file``) so the set algebra reads like the original.
"""

from __future__ import annotations

from .tables import (
    ADVISOR,
    BLACK,
    CANNON,
    DIAG,
    ELEPHANT,
    FILES,
    HORSE,
    HORSE_ATTACKERS,
    HORSE_MOVES,
    KING,
    ORTHO,
    PALACE,
    PAWN,
    PAWN_ATTACKERS,
    PAWN_MOVES,
    RANKS,
    RAYS,
    RED,
    ROOK,
    SQUARES,
    file_of,
    rank_of,
    square,
)

BIT = [1 << s for s in range(SQUARES)]


def _mask(squares) -> int:
    m = 0
    for s in squares:
        m |= BIT[s]
    return m


def _squares(mask: int):
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _steps(steps) -> list[tuple[int, ...]]:
    """For each square, the squares one of `steps` away that are on the board."""
    return [tuple(square(file_of(s) + df, rank_of(s) + dr) for df, dr in steps
                  if 0 <= file_of(s) + df < FILES and 0 <= rank_of(s) + dr < RANKS) for s in range(SQUARES)]


_ORTHO_NEAR = [_mask(t) for t in _steps(ORTHO)]
_DIAG_NEAR = [_mask(t) for t in _steps(DIAG)]
# Elephant jumps with their eye, not limited to the own half: fairy-stockfish's unrestricted attack pattern.
_ELEPHANT_JUMPS = [tuple((t, (s + t) // 2) for t in jumps)
                   for s, jumps in enumerate(_steps([(2 * f, 2 * r) for f, r in DIAG]))]
_LINES = [_mask(t for ray in RAYS[s] for t in ray) for s in range(SQUARES)]  # rank and file through s, s excluded
# Forward and sideways on either half: the pawn's pattern before the river limits it.
_PAWN_STEPS = {side: [_mask(t) for t in _steps(((0, side), (1, 0), (-1, 0)))] for side in (RED, BLACK)}
_PALACE = {side: _mask(PALACE[side]) for side in (RED, BLACK)}
_OWN_HALF = {RED: _mask(range(SQUARES // 2)), BLACK: _mask(range(SQUARES // 2, SQUARES))}


def _rook(s: int, occ: int) -> int:
    """The first occupied square along each ray from s (empty squares never matter to the callers)."""
    out = 0
    for ray in RAYS[s]:
        for t in ray:
            if occ & BIT[t]:
                out |= BIT[t]
                break
    return out


def _cannon(s: int, occ: int) -> int:
    """The first occupied square behind the first screen along each ray from s."""
    out = 0
    for ray in RAYS[s]:
        screened = False
        for t in ray:
            if occ & BIT[t]:
                if screened:
                    out |= BIT[t]
                    break
                screened = True
    return out


def _horse(s: int, occ: int) -> int:
    return _mask(t for t, leg in HORSE_MOVES[s] if not occ & BIT[leg])


def _elephant(s: int, occ: int) -> int:
    return _mask(t for t, eye in _ELEPHANT_JUMPS[s] if not occ & BIT[eye])


def _attacks(side: int, kind: int, s: int, occ: int) -> int:
    """Squares a `side` piece of `kind` on s attacks, by its pattern alone: elephants may cross the river,
    advisors leave the palace and pawns step sideways anywhere (fairy-stockfish's ``attacks_bb``)."""
    if kind == ROOK:
        return _rook(s, occ)
    if kind == CANNON:
        return _cannon(s, occ)
    if kind == HORSE:
        return _horse(s, occ)
    if kind == ELEPHANT:
        return _elephant(s, occ)
    if kind == ADVISOR:
        return _DIAG_NEAR[s]
    if kind == PAWN:
        return _PAWN_STEPS[side][s]
    return _ORTHO_NEAR[s] & _PALACE[side]


def _attacks_from(side: int, kind: int, s: int, occ: int) -> int:
    """What the piece really attacks, within the region its kind may stand on (``attacks_from``)."""
    if kind == PAWN:
        return _mask(PAWN_MOVES[side][s])
    if kind == ELEPHANT:
        return _elephant(s, occ) & _OWN_HALF[side]
    if kind == ADVISOR:
        return _DIAG_NEAR[s] & _PALACE[side]
    return _attacks(side, kind, s, occ)


class _Position:
    """Piece sets of one position."""

    def __init__(self, squares: list[int]) -> None:
        self.squares = squares
        self.occ = _mask(s for s, p in enumerate(squares) if p)
        self.kind = {(p, k): 0 for p in (RED, BLACK) for k in range(KING, PAWN + 1)}
        for s, p in enumerate(squares):
            if p:
                self.kind[(1 if p > 0 else -1, abs(p))] |= BIT[s]
        self.color = {c: sum(self.kind[(c, k)] for k in range(KING, PAWN + 1)) for c in (RED, BLACK)}
        self.king = {c: self.kind[(c, KING)].bit_length() - 1 for c in (RED, BLACK)}

    def of(self, color: int, *kinds: int) -> int:
        return sum(self.kind[(color, k)] for k in kinds)

    def kind_on(self, s: int) -> int:
        return abs(self.squares[s])

    def attackers(self, s: int, occ: int, color: int) -> int:
        """`color`'s pieces attacking s with occupancy `occ` (kings only by a step in the palace)."""
        rooks_cannons = self.of(color, ROOK) & _rook(s, occ) | self.of(color, CANNON) & _cannon(s, occ)
        horses = _mask(h for h, leg in HORSE_ATTACKERS[s] if not occ & BIT[leg]) & self.of(color, HORSE)
        near = _mask(PAWN_ATTACKERS[color][s]) & self.of(color, PAWN)
        if _OWN_HALF[color] & BIT[s]:
            near |= _elephant(s, occ) & self.of(color, ELEPHANT)
        if _PALACE[color] & BIT[s]:
            near |= _DIAG_NEAR[s] & self.of(color, ADVISOR) | _ORTHO_NEAR[s] & self.of(color, KING)
        return rooks_cannons | horses | near

    def blockers(self, color: int) -> int:
        """Pieces of either side whose removal would expose `color`'s king to a rook, cannon or horse."""
        ksq, enemy = self.king[color], -color
        rooks = self.of(enemy, ROOK) & _LINES[ksq] & ~_rook(ksq, self.occ)
        cannons = self.of(enemy, CANNON) & _LINES[ksq] & ~_cannon(ksq, self.occ)
        horses = _mask(h for h, leg in HORSE_ATTACKERS[ksq] if self.occ & BIT[leg]) & self.of(enemy, HORSE)
        occ = self.occ & ~(rooks | horses)
        out = 0
        for h in _squares(horses):
            out |= _ORTHO_NEAR[h] & _DIAG_NEAR[ksq] & occ
        for sniper in _squares(rooks | cannons):
            between = _between(ksq, sniper)
            hopper = cannons & BIT[sniper]
            b = between & (self.occ if hopper else occ)
            if b and (b & (b - 1) == 0 or hopper and b.bit_count() == 2):
                out |= b
        return out


def _between(a: int, b: int) -> int:
    """Squares strictly between a and b on a rank or file."""
    for ray in RAYS[a]:
        if b in ray:
            return _mask(ray[: ray.index(b)])
    return 0


def chased(before: list[int], side: int, move: int) -> tuple[list[int], int]:
    """Play `move` (``from << 7 | to``) by `side` on a copy of `before`; return the new squares and the
    set of the opponent's pieces that the move chases."""
    fr, to = move >> 7, move & 127
    after = list(before)
    captured = after[to]
    after[to], after[fr] = after[fr], 0
    pos = _Position(after)
    us, them = side, -side  # `them`, to move now, owns the pieces that can be chased
    occ = pos.occ
    blockers = pos.blockers(them)
    pins = blockers
    file_pieces = _mask(range(file_of(pos.king[us]), SQUARES, FILES)) & pos.color[them]
    if file_pieces & BIT[pos.king[them]]:
        others = file_pieces & ~BIT[pos.king[them]]
        if others & (others - 1) == 0:  # the flying general pins a lone piece on the kings' file
            pins |= others
    not_chasable = pos.of(them, KING) | pos.of(them, PAWN) & _OWN_HALF[them]
    out = 0

    def add(attacker: int, kind: int, attacks: int) -> None:
        nonlocal out
        if not attacks & ~out:
            return
        attacks &= ~not_chasable
        if kind in (HORSE, CANNON):
            out |= attacks & pos.of(them, ROOK)
        if kind in (ELEPHANT, ADVISOR):
            out |= attacks & pos.of(them, ROOK, CANNON, HORSE)
        if kind == HORSE and _DIAG_NEAR[attacker] & occ:  # a lame horse may attack without being attacked back
            for h in _squares(attacks & pos.of(them, HORSE)):
                if _horse(h, occ) & BIT[attacker]:
                    attacks ^= BIT[h]
        else:  # like attacking like is mutual, not a chase, unless the target is pinned
            attacks &= ~pos.of(them, kind) | pins
        without = occ & ~BIT[attacker]
        for s in _squares(attacks):
            roots = pos.attackers(s, without, them) & ~pins
            if not roots or (roots == pos.of(them, KING) and _rook(pos.king[us], without) & BIT[s]):
                out |= BIT[s]

    kind = pos.kind_on(to)
    if kind not in (KING, PAWN):
        direct = _attacks_from(us, kind, to, occ) & pos.color[them]
        if kind in (ROOK, CANNON):  # only new attacks: not along the line it moved on
            direct &= ~(_LINES[fr] & _LINES[to] | BIT[fr] | BIT[to])
        add(to, kind, direct)

    before_occ = (occ if captured else occ & ~BIT[to]) | BIT[fr]
    uncovering = (_ORTHO_NEAR[fr] & pos.of(us, HORSE) | _DIAG_NEAR[fr] & pos.of(us, ELEPHANT)
                  | _LINES[fr] & pos.of(us, CANNON, ROOK) | _LINES[to] & pos.of(us, CANNON))
    for s in _squares(uncovering):
        k = pos.kind_on(s)
        add(s, k, pos.color[them] & _attacks(us, k, s, occ) & ~_attacks(us, k, s, before_occ))

    new_blockers = blockers & ~_Position(before).blockers(them)
    their_blockers = pos.blockers(us)
    for s in _squares(new_blockers & pos.color[them]):  # a newly pinned piece no longer protects
        defended = pos.color[them] & ~not_chasable & _attacks(them, pos.kind_on(s), s, occ)
        for s2 in _squares(defended):
            if pos.attackers(s2, occ, us) & ~their_blockers:
                out |= BIT[s2]
    king = pos.king[them]
    king_reach = _ORTHO_NEAR[king] & _PALACE[them]
    for s in _squares(new_blockers & pos.color[us]):  # a piece that now uncovers check chases what it attacks
        hits = _attacks_from(us, pos.kind_on(s), s, occ) & pos.color[them]
        out |= hits & ~king_reach
        for s2 in _squares(hits & king_reach):  # unless the king may take it back
            if pos.attackers(s2, occ & ~BIT[s] & ~BIT[king], us) & ~BIT[s]:
                out |= BIT[s2]
    return after, out


def follow_back(squares: int, move: int) -> int:
    """`squares` as they were before `move`: a piece it moved goes back to where it came from, so a chase
    can be followed to the same piece on an earlier ply."""
    fr, to = move >> 7, move & 127
    return squares ^ BIT[to] | BIT[fr] if squares & BIT[to] else squares
