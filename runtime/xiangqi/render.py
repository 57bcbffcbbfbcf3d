"""Text drawing of a position for a terminal (used by the interactive `play` command)."""

from __future__ import annotations

from .board import Board
from .notation import FILE_LETTERS, piece_letter
from .tables import (
    ADVISOR,
    CANNON,
    ELEPHANT,
    FILES,
    HORSE,
    KING,
    PAWN,
    RANKS,
    ROOK,
    square,
)

# Red and black use different characters for every piece, so sides stay distinct without colour.
_CHINESE = {
    KING: "帥", ADVISOR: "仕", ELEPHANT: "相", HORSE: "傌", ROOK: "俥", CANNON: "炮", PAWN: "兵",
    -KING: "將", -ADVISOR: "士", -ELEPHANT: "象", -HORSE: "馬", -ROOK: "車", -CANNON: "砲", -PAWN: "卒",
}
_RED_ANSI, _RESET_ANSI = "\x1b[31m", "\x1b[0m"


def render(board: Board, *, chinese: bool = True, color: bool = False) -> str:
    """Ranks 9 (black) down to 0 (red) with file letters a-i; Chinese pieces are two columns wide.

    Letter mode writes red in upper case and black in lower case; `color` paints red pieces red.
    """
    empty = "＋" if chinese else "."
    gap = " " if chinese else "  "
    lines = ["   " + "  ".join(FILE_LETTERS)]
    for rank in range(RANKS - 1, -1, -1):
        cells = []
        for file in range(FILES):
            piece = board.squares[square(file, rank)]
            if piece == 0:
                cells.append(empty)
                continue
            text = _CHINESE[piece] if chinese else piece_letter(piece)
            cells.append(f"{_RED_ANSI}{text}{_RESET_ANSI}" if color and piece > 0 else text)
        lines.append(f"{rank}  " + gap.join(cells))
        if rank == 5:
            lines.append("   " + ("    楚 河      漢 界" if chinese else "   ~~~~~ river ~~~~~"))
    lines.append(f"{board.turn} to move")
    return "\n".join(lines)
