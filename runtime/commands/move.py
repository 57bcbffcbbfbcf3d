"""`edgeinfer move`: the model's move after a game's moves (always legal)."""

from __future__ import annotations

import argparse

import numpy as np

from ..errors import InputError
from ..loader import default_bundle
from ..xiangqi import Board
from ..xiangqi.mover import MoveModel
from ..xiangqi.search import choose_by_search
from .common import at_least, load_for

HELP = "choose the next Xiangqi move after the given moves (exact scores over all legal moves)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--moves", default="", help='ICCS moves so far, e.g. "h2e2 h9g7"')
    parser.add_argument("--fen", default=None, help="start position (default: the standard opening position)")
    parser.add_argument("--top", type=int, default=1, metavar="N", help="list the N best moves with probabilities")
    parser.add_argument("--temperature", type=float, default=None, help="sample a move instead of the best one")
    add_search_argument(parser)
    parser.add_argument("--seed", type=at_least(0), default=None)
    parser.add_argument("--bundle", default=None, help="Xiangqi bundle (default: the shipped one)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def add_search_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--search", action="store_true",
                        help="choose by a two-ply material search with the model's scores as priors "
                             "(edgeinfer.xiangqi.search) instead of the model's best move")


def mover_for(args: argparse.Namespace) -> MoveModel:
    """The --bundle (default: the shipped one) as a move chooser, for `move` and `play`."""
    return MoveModel(load_for(args.command, args.bundle or default_bundle("xiangqi"), ("xiangqi",), args.device))


def run(args: argparse.Namespace) -> tuple[dict, str]:
    board = Board.from_moves(args.moves.split(), fen=args.fen)
    mover = mover_for(args)
    scored = mover.score(board)
    if args.temperature is not None:
        if args.search:
            raise InputError("--search chooses a move itself; leave out --temperature")
        chosen = mover.sample(board, args.temperature, np.random.default_rng(args.seed))
    elif args.search:
        chosen = choose_by_search(board, scored)
    else:
        chosen = scored[0]
    top = [{"move": s.move, "probability": round(s.probability, 4), "logprob": round(s.logprob, 4)}
           for s in scored[: max(1, args.top)]]
    result = {"fen": board.fen(), "move": chosen.move, "top": top, "legal_moves": len(scored)}
    lines = [chosen.move] if args.top <= 1 else [f"{chosen.move}; the model's top {len(top)}:",
                                                 *(f"{t['move']}  {t['probability']:.3f}" for t in top)]
    return result, "\n".join(lines)
