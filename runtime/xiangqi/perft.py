"""Perft: count the leaf nodes of the legal-move tree, the standard check of a move generator."""

from __future__ import annotations

from .board import Board
from .notation import format_move


def _count(board: Board, depth: int) -> int:
    moves = board._legal()
    if depth == 1:
        return len(moves)
    total = 0
    for m in moves:
        board._make(m)
        total += _count(board, depth - 1)
        board._unmake()
    return total


def _as_board(board_or_fen: Board | str) -> Board:
    return Board(board_or_fen, max_plies=None) if isinstance(board_or_fen, str) else board_or_fen


def perft(board_or_fen: Board | str, depth: int) -> int:
    """Leaf nodes at `depth` plies (1 at depth 0). A Board passed in is left as it was."""
    board = _as_board(board_or_fen)
    return 1 if depth <= 0 else _count(board, depth)


def divide(board_or_fen: Board | str, depth: int) -> dict[str, int]:
    """Perft split by first move (ICCS -> leaf count), to find which subtree disagrees with a reference."""
    board = _as_board(board_or_fen)
    counts = {}
    for m in board._legal():
        board._make(m)
        counts[format_move(m)] = 1 if depth <= 1 else _count(board, depth - 1)
        board._unmake()
    return dict(sorted(counts.items()))
