"""`edgeinfer perft`: count leaf nodes of the Xiangqi move tree, to check the rules engine against published numbers."""

from __future__ import annotations

import argparse
import time

from ..errors import InputError
from ..xiangqi import START_FEN, Board, divide, perft

HELP = "count leaf nodes of the Xiangqi move tree (perft)"
MAX_DEPTH = 7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fen", default=START_FEN, help="position to start from (default: the start position)")
    parser.add_argument("--depth", type=int, required=True, metavar="N", help=f"plies to search, 0-{MAX_DEPTH}")
    parser.add_argument("--divide", action="store_true", help="also give the count below each first move")


def run(args: argparse.Namespace) -> tuple[dict, str]:
    if not 0 <= args.depth <= MAX_DEPTH:
        raise InputError(f"--depth must be between 0 and {MAX_DEPTH}, got {args.depth}")
    board = Board(args.fen, max_plies=None)
    start = time.perf_counter()
    per_move = divide(board, args.depth) if args.divide and args.depth > 0 else None
    nodes = sum(per_move.values()) if per_move is not None else perft(board, args.depth)
    seconds = time.perf_counter() - start
    result = {"fen": board.fen(), "depth": args.depth, "nodes": nodes, "seconds": round(seconds, 3)}
    lines = []
    if per_move is not None:
        result["divide"] = per_move
        lines = [f"{move}: {count}" for move, count in per_move.items()]
    lines.append(f"perft({args.depth}) = {nodes} in {seconds:.2f} s ({nodes / max(seconds, 1e-9):,.0f} nodes/s)")
    return result, "\n".join(lines)
