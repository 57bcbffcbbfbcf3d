"""Xiangqi (Chinese chess) rules: FEN, ICCS moves, legal-move generation, game end, perft, text board."""

from .board import DEFAULT_MAX_PLIES, NO_CAPTURE_PLIES, Board, Outcome
from .notation import START_FEN, iccs_to_uci, uci_to_iccs
from .perft import divide, perft
from .render import render

__all__ = [
    "DEFAULT_MAX_PLIES",
    "NO_CAPTURE_PLIES",
    "START_FEN",
    "Board",
    "Outcome",
    "divide",
    "iccs_to_uci",
    "perft",
    "render",
    "uci_to_iccs",
]
