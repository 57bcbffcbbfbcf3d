"""Text formats: FEN placement, ICCS moves (ranks 0-9) and UCI moves (ranks 1-10).

ICCS is what this package speaks everywhere; fairy-stockfish and pyffish use
UCI squares numbered 1-10, so the converters here are the only place the two
conventions meet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InputError
from .tables import (
    ADVISOR,
    BLACK,
    CANNON,
    ELEPHANT,
    FILES,
    HORSE,
    KING,
    PAWN,
    RANKS,
    RED,
    ROOK,
    SQUARES,
    file_of,
    rank_of,
    square,
)

START_FEN = "rnbakabnr/9/1c5c1/p1p1p1p1p/9/9/P1P1P1P1P/1C5C1/9/RNBAKABNR w - - 0 1"

LETTER_TO_KIND = {"k": KING, "a": ADVISOR, "b": ELEPHANT, "e": ELEPHANT, "n": HORSE, "h": HORSE,
                  "r": ROOK, "c": CANNON, "p": PAWN}
KIND_TO_LETTER = {KING: "k", ADVISOR: "a", ELEPHANT: "b", HORSE: "n", ROOK: "r", CANNON: "c", PAWN: "p"}
FILE_LETTERS = "abcdefghi"
DIGITS = "0123456789"

# [0-9], not \d (which also matches other scripts' digits); two at most, so a long run cannot reach int()'s limit
_MOVE_RE = re.compile(r"^([a-z])([0-9]{1,2})-?([a-z])([0-9]{1,2})$")
_UCI_RE = re.compile(r"^([a-i])(10|[1-9])([a-i])(10|[1-9])$")
_ICCS_RE = re.compile(r"^([a-i])([0-9])([a-i])([0-9])$")


def piece_letter(piece: int) -> str:
    letter = KIND_TO_LETTER[abs(piece)]
    return letter.upper() if piece > 0 else letter


def square_name(sq: int) -> str:
    return f"{FILE_LETTERS[file_of(sq)]}{rank_of(sq)}"


def format_move(move: int) -> str:
    """Internal move (from << 7 | to) -> ICCS string such as 'h2e2'."""
    return square_name(move >> 7) + square_name(move & 127)


def parse_move(text: str) -> int:
    """ICCS string -> internal move; accepts 'h2e2', 'H2-E2'. Raises InputError naming the problem."""
    if not isinstance(text, str):
        raise InputError(f"move must be a string like 'h2e2', got {type(text).__name__}")
    m = _MOVE_RE.match(text.strip().lower())
    if m is None:
        raise InputError(f"malformed move {text!r}: expected ICCS like 'h2e2' (file a-i, rank 0-9, from then to)")
    squares = []
    for f, r in ((m.group(1), m.group(2)), (m.group(3), m.group(4))):
        if f not in FILE_LETTERS or int(r) >= RANKS:
            raise InputError(f"move {text!r}: square '{f}{r}' is off the board (files a-i, ranks 0-9)")
        squares.append(square(FILE_LETTERS.index(f), int(r)))
    if squares[0] == squares[1]:
        raise InputError(f"move {text!r}: from and to squares are the same")
    return squares[0] << 7 | squares[1]


def iccs_to_uci(move: str) -> str:
    """'h2e2' -> 'h3e3': fairy-stockfish numbers ranks 1-10."""
    m = _ICCS_RE.match(move.strip().lower()) if isinstance(move, str) else None
    if m is None:
        raise InputError(f"malformed ICCS move {move!r}: expected e.g. 'h2e2' (file a-i, rank 0-9)")
    return f"{m.group(1)}{int(m.group(2)) + 1}{m.group(3)}{int(m.group(4)) + 1}"


def uci_to_iccs(move: str) -> str:
    """'h3e3' -> 'h2e2'; 'a10a9' -> 'a9a8'."""
    m = _UCI_RE.match(move.strip().lower()) if isinstance(move, str) else None
    if m is None:
        raise InputError(f"malformed UCI move {move!r}: expected e.g. 'h3e3' (file a-i, rank 1-10)")
    return f"{m.group(1)}{int(m.group(2)) - 1}{m.group(3)}{int(m.group(4)) - 1}"


@dataclass
class ParsedFen:
    squares: list[int]
    side: int
    halfmove: int
    fullmove: int


def parse_fen(fen: str) -> ParsedFen:
    """Split a FEN into placement, side and counters; only syntax is checked here (legality is Board's job)."""
    if not isinstance(fen, str):
        raise InputError(f"bad FEN: expected a string, got {type(fen).__name__}")
    if not fen.strip():
        raise InputError("bad FEN: empty")
    fields = fen.split()
    rows = fields[0].split("/")
    if len(rows) != RANKS:
        raise InputError(f"bad FEN: {len(rows)} ranks, expected 10 in {fen!r}")
    squares = [0] * SQUARES
    for i, row in enumerate(rows):
        rank = RANKS - 1 - i
        file = 0
        for j, ch in enumerate(row):
            if ch in DIGITS:  # not str.isdigit(): that holds for '²', which int() refuses
                if j and row[j - 1] in DIGITS:
                    raise InputError(f"bad FEN: {row[j - 1:j + 1]!r} on rank {rank}: empty files are counted by one digit")
                file += int(ch)
                continue
            kind = LETTER_TO_KIND.get(ch.lower())
            if kind is None:
                raise InputError(f"bad FEN: unknown piece letter {ch!r} on rank {rank}")
            if file < FILES:
                squares[square(file, rank)] = kind if ch.isupper() else -kind
            file += 1
        if file != FILES:
            raise InputError(f"bad FEN: rank {rank} has {file} files, expected 9 ('{row}')")
    side_text = fields[1].lower() if len(fields) > 1 else "w"
    if side_text not in ("w", "r", "b"):
        raise InputError(f"bad FEN: side to move {fields[1]!r}, expected 'w' (or 'r') for red or 'b' for black")
    side = BLACK if side_text == "b" else RED
    halfmove, fullmove = 0, 1
    try:
        if len(fields) > 4:
            halfmove = int(fields[4])
        if len(fields) > 5:
            fullmove = int(fields[5])
    except ValueError:
        raise InputError(f"bad FEN: move counters {' '.join(fields[4:6])!r} are not integers") from None
    if halfmove < 0 or fullmove < 1:
        raise InputError(f"bad FEN: move counters {halfmove} {fullmove} out of range")
    return ParsedFen(squares, side, halfmove, fullmove)


def format_placement(squares: list[int]) -> str:
    rows = []
    for rank in range(RANKS - 1, -1, -1):
        row, empty = "", 0
        for file in range(FILES):
            piece = squares[square(file, rank)]
            if piece == 0:
                empty += 1
                continue
            if empty:
                row += str(empty)
                empty = 0
            row += piece_letter(piece)
        rows.append(row + (str(empty) if empty else ""))
    return "/".join(rows)
