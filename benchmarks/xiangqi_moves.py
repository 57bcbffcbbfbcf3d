"""Xiangqi move selection: speed against the seed's method, agreement with the engine, and match results.

    python benchmarks/xiangqi_moves.py [--bundle runtime/bundles/xiangqi] [--games 100] [--nodes 1]

1. latency of choosing a move at plies 10, 40 and 80 of test games: the tree scorer (cold: a fresh game cache;
   warm: the kept cache extended by the last two moves, as during play) against the seed's method (one full
   forward pass per legal move), on the same bundle;
2. top-1 agreement of the model's best move with fairy-stockfish's recorded move on test-game positions;
3. match results: `--games` games against a uniformly random legal mover and against fairy-stockfish at a
   small node budget, the model taking red in half of them.
Writes results/xiangqi_moves.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

import edgeinfer
from edgeinfer.xiangqi import Board, iccs_to_uci, uci_to_iccs
from edgeinfer.xiangqi.mover import MoveModel
from edgeinfer.xiangqi.tokens import TOKEN_ID, encode_moves


def timed_ms(fn, repeats: int) -> list[float]:
    """Milliseconds of each of `repeats` calls of `fn`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return times


def one_run_per_move(model, board: Board) -> dict[str, float]:
    """The method the tree scorer replaces: one full forward pass per legal move, no cache."""
    context = encode_moves(board.move_stack)
    scores = {}
    for move in board.legal_moves():
        logits = model.logits(np.array([context + [TOKEN_ID[c] for c in move]]))[0, -5:-1].astype(np.float64)
        logprobs = logits - logits.max(-1, keepdims=True)
        logprobs -= np.log(np.exp(logprobs).sum(-1, keepdims=True))
        scores[move] = float(sum(logprobs[i, TOKEN_ID[c]] for i, c in enumerate(move)))
    return scores


def latency_at(model, game: list[str], ply: int, repeats: int) -> dict:
    board = Board.from_moves(game[:ply], max_plies=None)
    before = Board.from_moves(game[: ply - 2], max_plies=None)
    mover = MoveModel(model)

    def warm() -> float:
        mover.score(before)  # the position two plies ago is cached, as in a game
        start = time.perf_counter()
        mover.score(board)
        return time.perf_counter() - start

    samples = {"tree_warm_ms": [1e3 * warm() for _ in range(repeats)],
               "tree_cold_ms": timed_ms(lambda: MoveModel(model).score(board), repeats),
               "seed_rerun_ms": timed_ms(lambda: one_run_per_move(model, board), max(1, repeats // 3))}
    row = {"legal_moves": len(board.legal_moves())}
    row |= {name: round(statistics.median(times), 2) for name, times in samples.items()}
    row |= {"speedup_cold": round(row["seed_rerun_ms"] / row["tree_cold_ms"], 1),
            "speedup_warm": round(row["seed_rerun_ms"] / row["tree_warm_ms"], 1), "samples_ms": samples}
    return row


def latency(model, games: list[list[str]], plies: list[int], repeats: int) -> dict:
    rows = {}
    for ply in plies:
        rows[ply] = latency_at(model, next(g for g in games if len(g) > ply), ply, repeats)
        print(f"ply {ply}: " + ", ".join(f"{k} {v}" for k, v in rows[ply].items() if k != "samples_ms"), flush=True)
    return rows


def agreement(model, games: list[list[str]], positions: int, seed: int) -> dict:
    rng = random.Random(seed)
    samples = [(g, rng.randrange(len(g))) for g in rng.choices(games, k=positions)]
    mover, hits = MoveModel(model), 0
    for game, ply in tqdm(samples, desc="agreement", mininterval=2):
        hits += mover.best(Board.from_moves(game[:ply], max_plies=None)).move == game[ply]
    return {"positions": positions, "top1_agreement": round(hits / positions, 4)}


def play_match(model, opponent, games: int, seed: int) -> dict:
    """Model vs `opponent(board) -> move`; the model plays red in even games. Counts from the model's side."""
    rng = random.Random(seed)
    tally = {"win": 0, "loss": 0, "draw": 0}
    for index in tqdm(range(games), desc="match", mininterval=2):
        mover, board = MoveModel(model), Board()
        model_side = "red" if index % 2 == 0 else "black"
        while (outcome := board.outcome()) is None:
            move = mover.best(board).move if board.turn == model_side else opponent(board, rng)
            board.push(move)
        tally["draw" if outcome.winner is None else "win" if outcome.winner == model_side else "loss"] += 1
    return tally


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--data", default="data/xiangqi", type=Path)
    parser.add_argument("--games", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=1, help="fairy-stockfish node budget per move")
    parser.add_argument("--positions", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from edgeinfer.export.xiangqi_data import DEFAULT_ENGINE, UciEngine
    from edgeinfer.loader import default_bundle

    model = edgeinfer.load(args.bundle or default_bundle("xiangqi"), device="cpu")
    games = [line.split() for line in (args.data / "test.txt").read_text().splitlines() if line.strip()]
    results = {"bundle": str(model.folder), "latency": latency(model, games, [10, 40, 80], args.repeats)}
    results["agreement"] = agreement(model, games, args.positions, args.seed)
    results["vs_random"] = play_match(model, lambda board, rng: rng.choice(board.legal_moves()), args.games, args.seed)
    engine = UciEngine(DEFAULT_ENGINE)

    def stockfish(board, rng):
        return uci_to_iccs(engine.best_move([iccs_to_uci(m) for m in board.move_stack], args.nodes))

    results[f"vs_fairy_stockfish_nodes{args.nodes}"] = play_match(model, stockfish, args.games, args.seed)
    engine.close()
    Path("results").mkdir(exist_ok=True)
    Path("results/xiangqi_moves.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
