"""The Xiangqi position: FEN in/out, legal moves, make/unmake, check and game end.

Moves are ICCS strings at the API ('h2e2') and ints (``from << 7 | to``) inside,
so the hot loops (legal-move generation, perft) never build strings. Make/unmake
edits one list in place and keeps an undo stack, which is much cheaper than
copying the board for every move tried.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InputError
from . import chase
from .notation import (
    START_FEN,
    format_move,
    format_placement,
    parse_fen,
    parse_move,
    square_name,
)
from .tables import (
    ADVISOR,
    ADVISOR_MOVES,
    ADVISOR_SQUARES,
    BLACK,
    CANNON,
    ELEPHANT,
    ELEPHANT_MOVES,
    ELEPHANT_SQUARES,
    FROM_SENSITIVE,
    HORSE,
    HORSE_ATTACKERS,
    HORSE_MOVES,
    KING,
    KING_MOVES,
    MAX_COUNT,
    PALACE,
    PAWN,
    PAWN_ATTACKERS,
    PAWN_MOVES,
    PAWN_SQUARES,
    PIECE_NAMES,
    RAYS,
    RED,
    ROOK,
    SQUARES,
    TO_SENSITIVE,
    file_of,
    side_name,
)

DEFAULT_MAX_PLIES = 300
REPETITION_COUNT = 3
NO_CAPTURE_PLIES = 100  # fairy-stockfish's 50-move rule, counted in plies; pawn moves do not reset it
# Checks given in the last NO_CAPTURE_PLIES beyond this many (by the side that checked more) extend it by 2 plies each.
FREE_CHECKS = 10

_rng = random.Random(0x5A0B1)
# Zobrist keys by piece + 7 (pieces are -7..7): a position hashes to one int, so repetitions are cheap to count.
_ZOBRIST = [[_rng.getrandbits(64) for _ in range(SQUARES)] for _ in range(15)]
_SIDE_KEY = _rng.getrandbits(64)
# Where each restricted piece kind may stand at all; a FEN with one elsewhere cannot come from a game.
_ALLOWED_SQUARES = {KING: PALACE, ADVISOR: ADVISOR_SQUARES, ELEPHANT: ELEPHANT_SQUARES, PAWN: PAWN_SQUARES}


@dataclass(frozen=True)
class Outcome:
    """How a finished game ended. `winner` is 'red', 'black' or None for a draw."""

    winner: str | None
    # 'checkmate', 'stalemate', 'perpetual_check', 'perpetual_chase', 'repetition', 'no_capture' or 'move_limit'
    reason: str

    @property
    def result(self) -> str:
        """PGN-style score from red's point of view: '1-0', '0-1' or '1/2-1/2'."""
        return {"red": "1-0", "black": "0-1", None: "1/2-1/2"}[self.winner]


class Board:
    """A Xiangqi position plus the moves that led to it (for unmake and repetition).

    Game-end rules, those of fairy-stockfish (pyffish, variant "xiangqi") so that games
    labelled here agree with the engine that plays them (see `outcome`):
    - no legal move loses for the side to move, in check (checkmate) or not (stalemate);
    - the same position with the same side to move occurring for the 3rd time ends the
      game: a side that gave check on every one of its moves since the first occurrence
      loses ('perpetual_check'); else a side that chased the same piece on every move
      loses ('perpetual_chase', see `chase.py`); if both or neither did, it is a draw;
    - NO_CAPTURE_PLIES plies without a capture draw ('no_capture'), the limit extended by
      2 plies for each check beyond FREE_CHECKS that one side gave in that stretch;
    - the board's own cap, not a Xiangqi rule: reaching `max_plies` plies (counted from the
      game start via the FEN's move number; None disables it) is a draw ('move_limit').
    Repetitions and checks are only looked for among the moves played on this board, as
    pyffish does for the moves it is given after a FEN.
    """

    def __init__(self, fen: str = START_FEN, *, max_plies: int | None = DEFAULT_MAX_PLIES) -> None:
        if max_plies is not None and max_plies < 1:
            raise InputError(f"max_plies must be a positive number of plies or None, got {max_plies}")
        parsed = parse_fen(fen)
        self.squares: list[int] = parsed.squares  # read-only for callers: index rank * 9 + file
        self.side: int = parsed.side
        self.halfmove: int = parsed.halfmove
        self.fullmove: int = parsed.fullmove
        self.max_plies = max_plies
        # Per move played: (move, captured, halfmove, hash, in check) - the last three as they were before it.
        self._stack: list[tuple[int, int, int, int, bool]] = []
        self.kings = {RED: -1, BLACK: -1}
        self._validate(fen)
        self._hash = self._compute_hash()
        self._in_check = self._attacked(self.kings[self.side], self.side)
        self._legal_of: tuple[int | None, list[int]] = (None, [])  # the last position's hash and its legal moves

    # ---- construction and text -------------------------------------------------

    @classmethod
    def from_moves(cls, moves: Iterable[str] | str, fen: str | None = None, *,
                   max_plies: int | None = DEFAULT_MAX_PLIES) -> Board:
        """Replay ICCS moves (a list or one space-separated string) from `fen` (default: start)."""
        board = cls(fen or START_FEN, max_plies=max_plies)
        for move in moves.split() if isinstance(moves, str) else moves:
            board.push(move)
        return board

    def _validate(self, fen: str) -> None:
        counts: dict[int, int] = {}
        for sq, piece in enumerate(self.squares):
            if piece == 0:
                continue
            counts[piece] = counts.get(piece, 0) + 1
            side, kind = (RED if piece > 0 else BLACK), abs(piece)
            allowed = _ALLOWED_SQUARES.get(kind)
            if allowed is not None and sq not in allowed[side]:
                raise InputError(f"bad FEN: {side_name(side)} {PIECE_NAMES[kind]} on {square_name(sq)} "
                                 f"is on a square no {PIECE_NAMES[kind]} can reach ({fen!r})")
            if kind == KING:
                self.kings[side] = sq
        for side in (RED, BLACK):
            for kind, most in MAX_COUNT.items():
                n = counts.get(kind * side, 0)
                if kind == KING and n == 0:
                    raise InputError(f"bad FEN: {side_name(side)} has no king ({fen!r})")
                if n > most:
                    raise InputError(f"bad FEN: {side_name(side)} has {n} {PIECE_NAMES[kind]}s, at most {most} "
                                     f"({fen!r})")
        if self._kings_facing():
            raise InputError(f"bad FEN: two kings face each other with {side_name(self.side)} to move ({fen!r})")
        if self._attacked(self.kings[-self.side], -self.side):
            raise InputError(f"bad FEN: {side_name(-self.side)} is in check but {side_name(self.side)} is to move, "
                             f"so its king could be captured ({fen!r})")

    def _compute_hash(self) -> int:
        h = _SIDE_KEY if self.side == BLACK else 0
        for sq, piece in enumerate(self.squares):
            if piece:
                h ^= _ZOBRIST[piece + 7][sq]
        return h

    def fen(self) -> str:
        """Standard Xiangqi FEN, as pyffish/fairy-stockfish write it."""
        side = "w" if self.side == RED else "b"
        return f"{format_placement(self.squares)} {side} - - {self.halfmove} {self.fullmove}"

    @property
    def turn(self) -> str:
        """'red' or 'black': the side to move."""
        return side_name(self.side)

    @property
    def ply(self) -> int:
        """Plies played since the game start, derived from the FEN move number."""
        return 2 * (self.fullmove - 1) + (self.side == BLACK)

    @property
    def move_stack(self) -> list[str]:
        """ICCS moves pushed on this board, oldest first."""
        return [format_move(entry[0]) for entry in self._stack]

    def __repr__(self) -> str:
        return f"Board({self.fen()!r})"

    # ---- attacks ---------------------------------------------------------------

    def _attacked(self, ksq: int, side: int) -> bool:
        """Is `side`'s king on `ksq` attacked (the flying general counts as a rook-like attack)?"""
        sq = self.squares
        opp = -side
        rook, cannon, king = ROOK * opp, CANNON * opp, KING * opp
        for ray in RAYS[ksq]:
            screened = False
            for t in ray:
                q = sq[t]
                if q == 0:
                    continue
                if screened:
                    if q == cannon:
                        return True
                    break
                if q == rook or q == king:
                    return True
                screened = True
        horse = HORSE * opp
        for h, leg in HORSE_ATTACKERS[ksq]:
            if sq[h] == horse and sq[leg] == 0:
                return True
        pawn = PAWN * opp
        for p in PAWN_ATTACKERS[opp][ksq]:
            if sq[p] == pawn:
                return True
        return False

    def _kings_facing(self) -> bool:
        red, black = self.kings[RED], self.kings[BLACK]
        if file_of(red) != file_of(black):
            return False
        return all(self.squares[s] == 0 for s in range(red + 9, black, 9))

    def is_check(self) -> bool:
        """Is the side to move in check?"""
        return self._in_check

    # ---- move generation -------------------------------------------------------

    def _pseudo_moves(self) -> list[int]:
        """Moves that follow each piece's movement rules, ignoring whether the own king ends up attacked."""
        sq = self.squares
        side = self.side
        moves: list[int] = []
        add = moves.append
        for s in range(SQUARES):
            kind = sq[s] * side
            if kind <= 0:
                continue
            base = s << 7
            if kind == ROOK:
                for ray in RAYS[s]:
                    for t in ray:
                        q = sq[t]
                        if q == 0:
                            add(base | t)
                        else:
                            if q * side < 0:
                                add(base | t)
                            break
            elif kind == CANNON:
                for ray in RAYS[s]:
                    screened = False
                    for t in ray:
                        q = sq[t]
                        if not screened:
                            if q == 0:
                                add(base | t)
                            else:
                                screened = True
                        elif q:
                            if q * side < 0:
                                add(base | t)
                            break
            elif kind == HORSE:
                for t, leg in HORSE_MOVES[s]:
                    if sq[leg] == 0 and sq[t] * side <= 0:
                        add(base | t)
            elif kind == PAWN:
                for t in PAWN_MOVES[side][s]:
                    if sq[t] * side <= 0:
                        add(base | t)
            elif kind == ELEPHANT:
                for t, eye in ELEPHANT_MOVES[s]:
                    if sq[eye] == 0 and sq[t] * side <= 0:
                        add(base | t)
            elif kind == ADVISOR:
                for t in ADVISOR_MOVES[s]:
                    if sq[t] * side <= 0:
                        add(base | t)
            else:
                for t in KING_MOVES[s]:
                    if sq[t] * side <= 0:
                        add(base | t)
        return moves

    def _legal(self) -> list[int]:
        """Pseudo-legal moves that do not leave the own king attacked (or facing the other king). The last position's
        list is kept (by its hash), as move choice asks for the same position's moves more than once."""
        if self._legal_of[0] == self._hash:
            return self._legal_of[1]
        sq = self.squares
        side = self.side
        ksq = self.kings[side]
        attacked = self._attacked
        in_check = self._in_check
        from_sens, to_sens = FROM_SENSITIVE[ksq], TO_SENSITIVE[ksq]
        legal: list[int] = []
        for m in self._pseudo_moves():
            fr, to = m >> 7, m & 127
            if not in_check and fr != ksq and not from_sens[fr] and not to_sens[to]:
                legal.append(m)
                continue
            captured = sq[to]
            sq[to] = sq[fr]
            sq[fr] = 0
            if not attacked(to if fr == ksq else ksq, side):
                legal.append(m)
            sq[fr] = sq[to]
            sq[to] = captured
        self._legal_of = (self._hash, legal)
        return legal

    def legal_moves(self) -> list[str]:
        """All legal moves for the side to move, as sorted ICCS strings."""
        return sorted(format_move(m) for m in self._legal())

    def checking_moves(self) -> dict[str, bool]:
        """The legal moves that give check, each with whether it mates (leaves the opponent no legal move)."""
        king, sq, found = self.kings[-self.side], self.squares, {}
        from_sens, to_sens = FROM_SENSITIVE[king], TO_SENSITIVE[king]
        for m in self._legal():
            fr, to = m >> 7, m & 127
            # a check comes along the king's rank or file (landing there, or a line or cannon screen changed by
            # leaving), through a horse leg left free, or from a horse landing a horse's move away
            if not (from_sens[fr] or to_sens[to] or sq[fr] * self.side == HORSE
                    and any(h == to for h, _ in HORSE_ATTACKERS[king])):
                continue
            self._make(m)
            if self._in_check:
                found[format_move(m)] = not self._legal()
            self._unmake()
        return found

    # ---- make / unmake ---------------------------------------------------------

    def _make(self, m: int) -> None:
        fr, to = m >> 7, m & 127
        sq = self.squares
        piece, captured = sq[fr], sq[to]
        h = self._hash
        self._stack.append((m, captured, self.halfmove, h, self._in_check))
        zp = _ZOBRIST[piece + 7]
        h ^= zp[fr] ^ zp[to] ^ _SIDE_KEY
        if captured:
            h ^= _ZOBRIST[captured + 7][to]
            self.halfmove = 0
        else:
            self.halfmove += 1
        sq[to] = piece
        sq[fr] = 0
        if piece == KING or piece == -KING:
            self.kings[self.side] = to
        if self.side == BLACK:
            self.fullmove += 1
        self.side = -self.side
        self._hash = h
        self._in_check = self._attacked(self.kings[self.side], self.side)

    def _unmake(self) -> None:
        m, captured, self.halfmove, self._hash, self._in_check = self._stack.pop()
        fr, to = m >> 7, m & 127
        sq = self.squares
        piece = sq[to]
        sq[fr] = piece
        sq[to] = captured
        self.side = -self.side
        if self.side == BLACK:
            self.fullmove -= 1
        if piece == KING or piece == -KING:
            self.kings[self.side] = fr

    def push(self, move: str) -> None:
        """Play an ICCS move; raises InputError saying why if it is malformed or illegal here."""
        m = parse_move(move)
        if m not in self._legal():
            raise InputError(f"illegal move {move!r} in position {self.fen()!r}: {self._why_illegal(m)}")
        self._make(m)

    def pop(self) -> str:
        """Take back the last pushed move and return it (ICCS)."""
        if not self._stack:
            raise InputError("no move to take back: the move stack is empty")
        move = format_move(self._stack[-1][0])
        self._unmake()
        return move

    def _why_illegal(self, m: int) -> str:
        fr, to = m >> 7, m & 127
        piece, target = self.squares[fr], self.squares[to]
        me = side_name(self.side)
        if piece == 0:
            return f"there is no piece on {square_name(fr)}"
        name = f"{side_name(1 if piece > 0 else -1)} {PIECE_NAMES[abs(piece)]}"
        if piece * self.side < 0:
            return f"the piece on {square_name(fr)} is a {name} but {me} is to move"
        if target * self.side > 0:
            return f"{square_name(to)} is occupied by {me}'s own {PIECE_NAMES[abs(target)]}"
        if m not in self._pseudo_moves():
            return f"a {name} cannot move from {square_name(fr)} to {square_name(to)}"
        self._make(m)
        facing = self._kings_facing()
        self._unmake()
        if facing:
            return "it would leave the two kings facing each other on an open file"
        return f"it would leave {me}'s king in check"

    # ---- game end --------------------------------------------------------------

    def repetitions(self) -> int:
        """How many times the current position (same side to move) has occurred, this time included."""
        h = self._hash
        return 1 + sum(1 for entry in self._stack if entry[3] == h)

    def may_repeat(self, plies: int) -> bool:
        """Whether the position `plies` moves from now could occur for the REPETITION_COUNT-th time: some position with
        that side to move has occurred REPETITION_COUNT - 1 times since the last capture (a cheap test that lets
        a caller skip trying the moves)."""
        window = min(self.halfmove, len(self._stack))
        hashes = [self._hash] if plies % 2 == 0 else []
        hashes += [self._stack[-back][3] for back in range(2 - plies % 2, window + 1, 2)]
        return max(Counter(hashes).values(), default=0) >= REPETITION_COUNT - 1

    def _checks(self) -> list[bool]:
        """Whether the side to move was in check, for each position played on this board, newest first."""
        return [self._in_check, *(entry[4] for entry in reversed(self._stack))]

    def _no_capture_over(self) -> bool:
        """NO_CAPTURE_PLIES without a capture, plus 2 plies per check beyond FREE_CHECKS by the side that checked
        more in that stretch (counted only once 20 plies were played on this board)."""
        if self.halfmove < NO_CAPTURE_PLIES:
            return False
        if len(self._stack) < 20:
            return True
        window = range(0, min(self.halfmove, len(self._stack)), 2)
        checks = self._checks()
        given = max(sum(checks[j] for j in window), sum(checks[j + 1] for j in window))
        return self.halfmove - 2 * max(given - FREE_CHECKS, 0) >= NO_CAPTURE_PLIES

    def _repeated_span(self) -> int:
        """Plies back to the earlier occurrence that makes the current position's REPETITION_COUNT-th, else 0."""
        h, seen = self._hash, 1
        stack = self._stack
        for back in range(4, min(self.halfmove, len(stack)) + 1, 2):
            if stack[-back][3] == h:
                seen += 1
                if seen == REPETITION_COUNT:
                    return back
        return 0

    def _chases(self, span: int) -> tuple[bool, bool]:
        """Did the opponent / the side to move chase one same piece (followed as it moves) with every move
        in the last `span` plies? As in fairy-stockfish, the opponent's moves counted include the one that
        led to the first occurrence, when it was played on this board."""
        entries = self._stack[-(span + (span < len(self._stack))):]
        squares, side = list(self.squares), self.side
        for m, captured, *_ in reversed(entries):  # back to the position before the first of them
            squares[m >> 7], squares[m & 127] = squares[m & 127], captured
            side = -side
        sets = []
        for m, *_ in entries:
            squares, chased = chase.chased(squares, side, m)
            sets.append(chased)
            side = -side
        sets.reverse()  # sets[k]: the pieces chased by the move that led to the position k plies ago
        moves = [entry[0] for entry in reversed(entries)]  # moves[k]: the move that led there

        def every_move(first: int) -> bool:
            chased = sets[first]
            for back in range(first + 2, len(sets), 2):
                chased = chase.follow_back(chased, moves[back - 1]) & sets[back]
            return chased != 0

        return every_move(0), every_move(1)

    def _repetition_outcome(self) -> Outcome | None:
        """Who loses a repetition: the side that checked, else chased, on every move of the cycle; else a draw."""
        span = self._repeated_span()
        if not span:
            return None
        checks = self._checks()[: span + 1]
        by_opponent, by_mover = all(checks[0::2]), all(checks[1::2])  # checks given to / by the side to move
        reason = "perpetual_check"
        if not by_opponent and not by_mover:
            by_opponent, by_mover = self._chases(span)
            reason = "perpetual_chase"
        if by_opponent == by_mover:
            return Outcome(None, "repetition")
        return Outcome(side_name(self.side if by_opponent else -self.side), reason)

    def outcome(self) -> Outcome | None:
        """None while the game goes on, else who won and why (rules in the class docstring)."""
        if not self._legal():
            return Outcome(side_name(-self.side), "checkmate" if self.is_check() else "stalemate")
        if self._no_capture_over():
            return Outcome(None, "no_capture")
        if (repeated := self._repetition_outcome()) is not None:
            return repeated
        if self.max_plies is not None and self.ply >= self.max_plies:
            return Outcome(None, "move_limit")
        return None
