"""Xiangqi move model: speed of move choice, agreement with the engine, and match results, in one command.

    python benchmarks/xiangqi_moves.py [--bundle runtime/bundles/xiangqi] [--games 100] [--nodes 1,100,1000]
        [--rerun-bundle runtime/bundles/xiangqi-chars]
        [--parts latency,agreement,random,engine,ceiling] [--search] [--seen-data FOLDER...]
        [--out results/xiangqi_moves.json]

1. latency of choosing a move at plies 10, 40 and 80 of --latency-positions test games each (medians over the
   positions, and the speedup's range): the one call that scores every legal move (`choice_ms`: for a 4-character
   bundle the tree scorer, the prompt once and every legal move's characters; for a square-pair bundle the prompt
   alone) against one full forward pass per legal move (prompt + move, no cache) of a 4-character bundle, same
   scores where that is the bundle itself (with --mirror each averaged with the mirrored position's, a second row of
   each call); a square-pair bundle has no such method of its own, so --rerun-bundle names the character bundle
   whose method it is measured against (default: the shipped `xiangqi-chars`);
2. on positions of the data's test split (`xiangqi_data.split_of`): top-1 agreement of the model's best move with
   fairy-stockfish's label, and the mean log-probability the model gives that move (against uniform over the legal
   moves), with and without the mirror (`MoveModel(mirror=True)`); with `--seen-data FOLDER...`, top-1 also on
   the positions no training game of those folders reaches (held-out games share their openings with training
   games, and an opening's engine reply is learned by heart); with `--parts ceiling`, how often
   fairy-stockfish itself (a fresh hash, 1000 and 4000 nodes) plays the labelled move, which was searched with its
   game's hash;
3. matches, `--games` each, the model's best move with nothing but the rules (colours alternate; each pair of games
   shares an opening of 2-5 random plies, so games differ): against a uniformly random legal mover, and against
   fairy-stockfish at each `--nodes` budget. Every game is refereed by pyffish (variant "xiangqi": its legal moves
   and its game end) as well as by `edgeinfer.xiangqi`, and a disagreement stops the run. In the random-mover
   games, how often the model takes a free capture (a capture the opponent cannot answer by recapturing) and plays
   mate in one when it has them. Each drawn game's material lead at its end, from the model's side
   (`draws_ahead` / `draws_level` / `draws_behind`, 2 pawns either way): a draw from ahead is a win thrown away, one
   from behind a loss escaped. With --search the matches are played by `edgeinfer.xiangqi.search` (two plies of
   material, the model's scores as priors) instead of the model's own choice.
Writes --out (results/xiangqi_moves.json).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
import pyffish
from tqdm import tqdm

import edgeinfer
from edgeinfer.export.xiangqi_data import (
    DEFAULT_ENGINE,
    UciEngine,
    load_games,
    split_of,
)
from edgeinfer.xiangqi import START_FEN, Board, iccs_to_uci, uci_to_iccs
from edgeinfer.xiangqi.mover import MoveModel
from edgeinfer.xiangqi.search import PRIOR_WEIGHT, material_lead, searched_best
from edgeinfer.xiangqi.tokens import (
    MIRRORED_TOKEN,
    mirrored_prompt,
    move_tokens,
    oriented_move,
)


def timed_ms(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return times


def one_run_per_move(mover: MoveModel, board: Board) -> dict[str, float]:
    """The method the tree scorer replaces, computing the same scores: one full forward pass (prompt + move, no cache)
    per legal move; with the mirror (a position not its own mirror), the mirrored prompt and move are a second row of
    the same pass."""
    prompt, segments = mover.prompt(board)
    views = [(prompt, segments, list)]
    if mover.mirror and (mirrored := mirrored_prompt(prompt)) != prompt:
        views.append((mirrored, segments and mirrored_prompt(segments),
                      lambda chars: [MIRRORED_TOKEN[c] for c in chars]))
    scores = {}
    for move in board.legal_moves():
        rows = [tokens + spelt(move_tokens(oriented_move(move, board.side))) for tokens, _, spelt in views]
        types = None if segments is None else np.array([view_segments + [0] * 4 for _, view_segments, _ in views])
        logits = mover.model.logits(np.array(rows), token_type_ids=types)[:, -5:-1].astype(np.float64)
        logprobs = logits - logits.max(-1, keepdims=True)
        logprobs -= np.log(np.exp(logprobs).sum(-1, keepdims=True))
        scores[move] = float(np.mean([sum(logprobs[r, i, c] for i, c in enumerate(row[-4:]))
                                      for r, row in enumerate(rows)]))
    return scores


def latency(mover: MoveModel, games: list[list[str]], plies: list[int], repeats: int, positions: int = 1,
            rerun_mover: MoveModel | None = None) -> dict:
    """Per ply, the first `positions` games that reach it: each position timed both ways (medians of repeats), the
    one-run-per-move method by `rerun_mover` (a 4-character bundle; default `mover`); the ply's figures are the
    medians over its positions, with the range of the speedup (it grows with the number of legal moves, which varies
    from position to position). samples_ms keeps every timed call."""
    rows = {}
    for ply in plies:
        measured, samples = [], {"choice_ms": [], "one_run_per_move_ms": []}
        for game in [g for g in games if len(g) > ply][:positions]:
            board = Board.from_moves(game[:ply], max_plies=None)
            choice = timed_ms(lambda board=board: mover.score(board), repeats)
            rerun = timed_ms(lambda board=board: one_run_per_move(rerun_mover or mover, board), max(1, repeats // 3))
            samples["choice_ms"] += choice
            samples["one_run_per_move_ms"] += rerun
            measured.append({"legal_moves": len(board.legal_moves()), "choice_ms": statistics.median(choice),
                             "one_run_per_move_ms": statistics.median(rerun)})
            measured[-1]["speedup"] = measured[-1]["one_run_per_move_ms"] / measured[-1]["choice_ms"]
        speedups = [m["speedup"] for m in measured]
        rows[ply] = {key: round(statistics.median(m[key] for m in measured), 2)
                     for key in ("legal_moves", "choice_ms", "one_run_per_move_ms", "speedup")}
        rows[ply] |= {"positions": len(measured), "speedup_min": round(min(speedups), 1),
                      "speedup_max": round(max(speedups), 1)}
        print(f"ply {ply}: {rows[ply]}", flush=True)
        rows[ply] |= {"per_position": measured, "samples_ms": samples}
    return rows


def sampled_positions(games: list[dict], positions: int, seed: int) -> list[tuple[dict, int]]:
    """`positions` (game, ply) pairs drawn from the test games: the positions `agreement` measures."""
    rng = random.Random(seed)
    return [(g, rng.randrange(g["plies"])) for g in rng.choices(games, k=positions)]


def trained_prefixes(folders: list[Path]) -> set[int]:
    """Hashes of every move prefix of the train-split games in `folders`: the positions a model trained on them saw
    (by move sequence: a position reached by transposition counts as unseen)."""
    seen = set()
    for folder in folders:
        for game in load_games(folder / "games.jsonl"):
            if split_of(game["moves"]) == "train":
                moves = game["moves"].split()
                seen.update(hash(" ".join(moves[:ply])) for ply in range(len(moves) + 1))
    return seen


def agreement(mover: MoveModel, games: list[dict], positions: int, seed: int, seen: set[int] | None = None) -> dict:
    """Top-1 agreement and mean log-probability of the engine's labelled move on test positions; with `seen`
    (`trained_prefixes`), top-1 on the positions outside it too."""
    hits, logprobs, uniform, unseen_hits = [], [], [], []
    for game, ply in tqdm(sampled_positions(games, positions, seed), desc="agreement", mininterval=2):
        moves = game["moves"].split()[:ply]
        label = game["labels"].split()[ply]
        scored = mover.score(Board.from_moves(moves, max_plies=None))
        hits.append(scored[0].move == label)
        logprobs.append(float(np.log(next(s.probability for s in scored if s.move == label))))
        uniform.append(-float(np.log(len(scored))))
        if seen is not None and hash(" ".join(moves)) not in seen:
            unseen_hits.append(hits[-1])
    result = {"positions": positions, "top1_agreement": round(statistics.fmean(hits), 4),
              "mean_logprob": round(statistics.fmean(logprobs), 3), "uniform_mean_logprob": round(statistics.fmean(uniform), 3)}
    if seen is not None:
        result |= {"unseen_positions": len(unseen_hits),
                   "unseen_top1_agreement": round(statistics.fmean(unseen_hits), 4) if unseen_hits else None}
    return result


def engine_agreement(games: list[dict], positions: int, seed: int, nodes: list[int]) -> dict:
    """How often fairy-stockfish itself, from a fresh hash at each budget, plays the labelled move on the positions
    `agreement` samples: the labels were searched with the hash their game had built up, so this is how far the
    engine's own move predicts them."""
    engine, hits = UciEngine(DEFAULT_ENGINE), dict.fromkeys(nodes, 0)
    for game, ply in tqdm(sampled_positions(games, positions, seed), desc="engine agreement", mininterval=2):
        moves = [iccs_to_uci(m) for m in game["moves"].split()[:ply]]
        for budget in nodes:
            engine.new_game()
            hits[budget] += uci_to_iccs(engine.best_move(moves, budget)) == game["labels"].split()[ply]
    engine.close()
    return {f"nodes{budget}": round(count / positions, 4) for budget, count in hits.items()}


def tactics(board: Board) -> tuple[set[str], set[str]]:
    """The mate-in-one moves and the free captures (no legal recapture on the square) of the side to move."""
    mates, free = set(), set()
    for move in board.legal_moves():
        target = move[2:]
        captures = board.squares[int(target[1]) * 9 + "abcdefghi".index(target[0])] != 0
        board.push(move)
        replies = board.legal_moves()
        if not replies and board.is_check():
            mates.add(move)
        elif captures and not any(reply[2:] == target for reply in replies):
            free.add(move)
        board.pop()
    return mates, free


def pyffish_verdict(moves: list[str], turn: str) -> str | None:
    """pyffish's verdict after `moves` from the start (`turn` moves next): 'red', 'black', 'draw' or None."""
    uci = [iccs_to_uci(m) for m in moves]
    if pyffish.legal_moves("xiangqi", START_FEN, uci):
        over, value = pyffish.is_optional_game_end("xiangqi", START_FEN, uci)
        if not over:
            return None
    else:
        value = pyffish.game_result("xiangqi", START_FEN, uci)
    other = "black" if turn == "red" else "red"
    return "draw" if value == 0 else turn if value > 0 else other


def refereed_outcome(moves: list[str], board: Board):
    """The game's outcome, after pyffish agrees with it (a cap at max_plies is the board's own and not checked)."""
    outcome = board.outcome()
    if outcome.reason != "move_limit":
        ours = outcome.winner or "draw"
        theirs = pyffish_verdict(moves, board.turn)
        if theirs != ours:
            raise SystemExit(f"referees disagree after {' '.join(moves)}: edgeinfer {outcome}, pyffish {theirs}")
    return outcome


DECISIVE_LEAD = 2.0  # pawns of material: a drawn game this far ahead (or behind) counts as a win thrown away (escaped)


def play_match(choose, opponent, games: int, seed: int, count_tactics: bool = False) -> dict:
    """The model's `choose(board) -> move` against `opponent(board, rng) -> move`; the model plays red in even games.
    Counts from its side.

    Games 2k and 2k+1 open with the same 2-5 random plies; every move is checked against pyffish's legal moves."""
    rng = random.Random(seed)
    tally: dict = {"win": 0, "loss": 0, "draw": 0}
    draws = {"draws_ahead": 0, "draws_level": 0, "draws_behind": 0}
    reasons: dict[str, int] = {}
    chances = {"mate_in_one": [0, 0], "free_capture": [0, 0]}  # [positions that had one, times the model took one]
    for index in tqdm(range(games), desc="match", mininterval=2):
        opening = random.Random(seed * 1_000_003 + index // 2)
        opening_plies = opening.randint(2, 5)
        board, moves = Board(), []
        model_side = "red" if index % 2 == 0 else "black"
        while board.outcome() is None:
            if len(moves) < opening_plies:
                move = opening.choice(board.legal_moves())
            elif board.turn == model_side:
                move = choose(board)
                if count_tactics:
                    mates, free = tactics(board)
                    for name, options in (("mate_in_one", mates), ("free_capture", free)):
                        if options:
                            chances[name][0] += 1
                            chances[name][1] += move in options
            else:
                move = opponent(board, rng)
            if iccs_to_uci(move) not in pyffish.legal_moves("xiangqi", START_FEN, [iccs_to_uci(m) for m in moves]):
                raise SystemExit(f"pyffish says {move} is illegal after {' '.join(moves)}")
            board.push(move)
            moves.append(move)
        outcome = refereed_outcome(moves, board)
        tally["draw" if outcome.winner is None else "win" if outcome.winner == model_side else "loss"] += 1
        reasons[outcome.reason] = reasons.get(outcome.reason, 0) + 1
        if outcome.winner is None:
            lead = material_lead(board) * (1 if board.turn == model_side else -1)
            side = "ahead" if lead >= DECISIVE_LEAD else "behind" if lead <= -DECISIVE_LEAD else "level"
            draws[f"draws_{side}"] += 1
    tally["score"] = round((tally["win"] + tally["draw"] / 2) / games, 3)
    tally["reasons"] = reasons
    tally |= draws
    if count_tactics:
        tally |= {f"{name}_rate": round(taken / had, 3) if had else None for name, (had, taken) in chances.items()}
        tally |= {f"{name}_positions": had for name, (had, _) in chances.items()}
    return tally


PARTS = ("latency", "agreement", "random", "engine")  # and "ceiling": the engine's own agreement with its labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--rerun-bundle", default=None, help="the 4-character bundle whose one run per legal move a "
                        "square-pair --bundle is timed against (default: the shipped xiangqi-chars)")
    parser.add_argument("--data", default="data/xiangqi", type=Path)
    parser.add_argument("--games", type=int, default=100)
    parser.add_argument("--nodes", default="1,100,1000", help="fairy-stockfish node budgets to play against")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which of {', '.join(PARTS)} (the default) and ceiling to run")
    parser.add_argument("--positions", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--latency-positions", type=int, default=10, help="test positions timed at each ply")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seen-data", type=Path, nargs="+", default=[], metavar="FOLDER",
                        help="xiangqi_data folders the model trained on: agreement also on the positions none reaches")
    parser.add_argument("--search", action="store_true", help="matches played by the model-guided two-ply search")
    parser.add_argument("--mirror", action="store_true",
                        help="average each move's score with the mirrored position's (MoveModel mirror=True)")
    parser.add_argument("--out", type=Path, default=Path("results/xiangqi_moves.json"))
    args = parser.parse_args()
    parts = args.parts.split(",")

    from edgeinfer.loader import default_bundle

    model = edgeinfer.load(args.bundle or default_bundle("xiangqi"), device="cpu")
    mover = MoveModel(model, mirror=args.mirror)
    test_games = [g for g in load_games(args.data / "games.jsonl") if split_of(g["moves"]) == "test"]
    results = {"bundle": str(model.folder), "date": time.strftime("%Y-%m-%d"),
               "mirror": mover.mirror, "matches_played_by": f"search, prior weight {PRIOR_WEIGHT}" if args.search else "the model's best move"}

    def choose(board: Board) -> str:
        return (searched_best(mover, board) if args.search else mover.best(board)).move

    if "latency" in parts:
        rerun_mover = None
        if mover.square_pairs or args.rerun_bundle:
            rerun_model = edgeinfer.load(args.rerun_bundle or default_bundle("xiangqi-chars"), device="cpu")
            rerun_mover = MoveModel(rerun_model, mirror=args.mirror)
            results["one_run_per_move_bundle"] = str(rerun_model.folder)
        results["latency"] = latency(mover, [g["moves"].split() for g in test_games], [10, 40, 80], args.repeats,
                                     args.latency_positions, rerun_mover)
    if "agreement" in parts:
        seen = trained_prefixes(args.seen_data) if args.seen_data else None
        if seen is not None:
            results["seen_data"] = [str(folder) for folder in args.seen_data]
        results["agreement"] = agreement(mover, test_games, args.positions, args.seed, seen)
        print(results["agreement"], flush=True)
        other = MoveModel(model, mirror=not mover.mirror)  # what the mirror adds
        key = "agreement_with_mirror" if other.mirror else "agreement_without_mirror"
        results[key] = agreement(other, test_games, args.positions, args.seed, seen)
        print(key, results[key], flush=True)
    if "ceiling" in parts:
        results["engine_agreement"] = engine_agreement(test_games, args.positions, args.seed, [1000, 4000])
        print("fairy-stockfish from a fresh hash", results["engine_agreement"], flush=True)
    if "random" in parts:
        results["vs_random"] = play_match(choose, lambda board, rng: rng.choice(board.legal_moves()), args.games,
                                          args.seed, count_tactics=True)
        print("vs random", results["vs_random"], flush=True)
    if "engine" in parts:
        engine = UciEngine(DEFAULT_ENGINE)
        for nodes in [int(n) for n in args.nodes.split(",")]:
            def stockfish(board, rng, nodes=nodes):
                return uci_to_iccs(engine.best_move([iccs_to_uci(m) for m in board.move_stack], nodes))

            results[f"vs_fairy_stockfish_nodes{nodes}"] = play_match(choose, stockfish, args.games, args.seed)
            print(f"vs fairy-stockfish nodes {nodes}", results[f"vs_fairy_stockfish_nodes{nodes}"], flush=True)
        engine.close()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
