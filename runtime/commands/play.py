"""`edgeinfer play`: a terminal game of Xiangqi against the model."""

from __future__ import annotations

import argparse

from ..errors import InputError
from ..xiangqi import Board, render
from ..xiangqi.search import searched_best
from .move import add_search_argument, mover_for

HELP = "play Xiangqi against the model in the terminal (moves in ICCS, e.g. h2e2)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--side", choices=["red", "black"], default="red", help="the side you play")
    parser.add_argument("--fen", default=None, help="start position")
    add_search_argument(parser)
    parser.add_argument("--letters", action="store_true", help="draw pieces as letters instead of Chinese")
    parser.add_argument("--bundle", default=None, help="Xiangqi bundle (default: the shipped one)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def run(args: argparse.Namespace) -> tuple[dict, str]:
    board = Board.from_moves([], fen=args.fen)
    mover = mover_for(args)
    human = args.side
    print("moves in ICCS (file a-i, rank 0-9, red at the bottom: h2e2); 'undo', 'moves', 'quit'")
    while board.outcome() is None:
        print(render(board, chinese=not args.letters))
        if board.turn != human:
            move = (searched_best(mover, board) if args.search else mover.best(board)).move
            print(f"model plays {move}")
            board.push(move)
            continue
        try:
            line = input(f"{human} to move> ").strip()
        except EOFError:
            line = "quit"
        if line == "quit":
            break
        if line == "moves":
            print(" ".join(sorted(board.legal_moves())))
        elif line == "undo":
            for _ in range(min(2, len(board.move_stack))):
                board.pop()
        else:
            try:
                board.push(line)
            except InputError as exc:
                print(f"not played: {exc}")
    outcome = board.outcome()
    print(render(board, chinese=not args.letters))
    text = f"game over: {outcome}" if outcome else "game left unfinished"
    return {"moves": board.move_stack, "outcome": str(outcome) if outcome else None}, text
