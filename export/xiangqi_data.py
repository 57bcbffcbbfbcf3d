"""Xiangqi positions labelled by fairy-stockfish, for training the move model.

    python -m edgeinfer.export.xiangqi_data --games 12000 --workers 2 --out data/xiangqi

    python -m edgeinfer.export.xiangqi_data --policy runtime/bundles/xiangqi --games 3000 --workers 2 \
        --out data/xiangqi-policy   # positions the model itself reaches, labelled the same way

Every position of every game is labelled with fairy-stockfish's best move at --label-nodes; what is played
varies, so that the positions cover what the model meets: each game opens with 2-8 random legal plies, then
is one of three kinds - engine against engine, engine against a uniformly random mover, or engine against a
noisy engine (a random move 30% of the time) - and any engine move is replaced by a random one 3% of the time.
With --policy a bundle's model takes the engine's place (its best move, as `benchmarks/xiangqi_moves.py` plays it)
against a random mover or fairy-stockfish at 1 node, the benchmark's opponents: the positions its own play leads
to, where imitating the engine's games alone leaves it without labels (dataset aggregation, "DAgger").
Every move is replayed through `edgeinfer.xiangqi`, whose `Board.outcome` decides when and how the game ends,
by fairy-stockfish's rules (mate, stalemate, perpetual check and perpetual chase lose; other third
repetitions and 100 plies without a capture draw) and the --max-plies cap (a draw). Game i always uses the
same seed, so an interrupted run resumes by appending only the missing games.
Outputs under --out: games.jsonl (one JSON per game: its moves and each position's label, unique move
sequences), train/valid/test.txt (one game per line, ICCS moves; split by a hash of the moves) and
config.json (the settings, checked on resume).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import multiprocessing
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from edgeinfer.errors import InputError
from edgeinfer.xiangqi import DEFAULT_MAX_PLIES, Board, iccs_to_uci, uci_to_iccs

DEFAULT_ENGINE = "/usr/games/fairy-stockfish"
SPLITS = (("train", 90), ("valid", 95), ("test", 100))  # cumulative percent of hash buckets
MAX_ATTEMPTS = 256  # seeds tried per game index before giving up on finding an unseen game
ENGINE_TRIES = 3  # engines a game is played on before giving up: each that hangs (EngineTimeout) is replaced


class EngineTimeout(RuntimeError):
    """The engine gave no answer within its time limit, and was killed: a stuck engine stops one game, not the run."""


class UciEngine:
    """Minimal UCI client over pipes: just what self-play needs (new game, best move at N nodes). A watchdog kills
    the engine when an answer takes longer than `timeout_s`, and the wait raises `EngineTimeout`."""

    def __init__(self, path: str, hash_mb: int = 16, timeout_s: float = 60.0) -> None:
        self._proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.name = ""
        self.timeout_s = timeout_s
        self._deadline: float | None = None
        self._timed_out = False
        threading.Thread(target=self._watch, daemon=True).start()
        self._send("uci")
        self._wait_for("uciok")
        for option, value in (("UCI_Variant", "xiangqi"), ("Threads", 1), ("Hash", hash_mb)):
            self._send(f"setoption name {option} value {value}")
        self._sync()

    def _watch(self) -> None:
        while self._proc.poll() is None:
            if self._deadline is not None and time.monotonic() > self._deadline:
                self._timed_out = True
                self._proc.kill()
                return
            time.sleep(min(1.0, self.timeout_s / 4))

    def _send(self, line: str) -> None:
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()

    def _wait_for(self, prefix: str) -> str:
        self._deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                line = self._proc.stdout.readline()
                if not line:
                    if self._timed_out:
                        self._proc.wait()
                        raise EngineTimeout(f"engine gave no {prefix!r} within {self.timeout_s:g} s, killed")
                    raise RuntimeError(f"engine exited while waiting for {prefix!r}")
                if line.startswith("id name "):
                    self.name = line[8:].strip()
                if line.startswith(prefix):
                    return line.strip()
        finally:
            self._deadline = None

    def _sync(self) -> None:
        self._send("isready")
        self._wait_for("readyok")

    def new_game(self) -> None:
        self._send("ucinewgame")
        self._sync()

    def best_move(self, uci_moves: list[str], nodes: int) -> str:
        self._send("position startpos moves " + " ".join(uci_moves) if uci_moves else "position startpos")
        self._send(f"go nodes {nodes}")
        return self._wait_for("bestmove").split()[1]

    def close(self) -> None:
        if self._proc.poll() is None:
            self._send("quit")
            self._proc.wait(timeout=10)


def game_seed(base_seed: int, index: int, attempt: int) -> int:
    """Seed of game `index`: fixed per index so resumed runs replay the same games."""
    return (base_seed << 40) | (index << 8) | attempt


GAME_KINDS = (("engine", 0.5), ("random_opponent", 0.25), ("noisy_opponent", 0.25))
POLICY_GAME_KINDS = (("policy_random_opponent", 0.5), ("policy_engine_opponent", 0.5))
NOISY_RANDOM_RATE = 0.3  # how often the noisy opponent plays a random move
EXPLORE_RATE = 0.03  # how often any engine (or policy) move is replaced by a random one
OPPONENT_NODES = 1  # node budget of the engine opponent in policy games (the benchmark's weakest engine)


def play_game(engine: UciEngine, seed: int, label_nodes: int, max_plies: int, opening: tuple[int, int],
              policy: Callable[[Board], str] | None = None) -> dict:
    """One labelled game; raises RuntimeError if the engine plays a move our rules reject. With `policy`, it plays
    the strong side's moves (instead of the engine's label) against a random mover or the engine at OPPONENT_NODES."""
    rng = random.Random(seed)
    board = Board(max_plies=max_plies)
    random_plies = rng.randint(*opening)
    kinds = GAME_KINDS if policy is None else POLICY_GAME_KINDS
    kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
    weak_side = rng.choice(("red", "black"))
    moves: list[str] = []
    labels: list[str] = []
    uci_moves: list[str] = []  # kept alongside so each engine call does not reconvert the whole game
    engine.new_game()
    while (outcome := board.outcome()) is None:
        try:
            label = uci_to_iccs(engine.best_move(uci_moves, label_nodes))
            weak = board.turn == weak_side
            random_move = (len(moves) < random_plies or rng.random() < EXPLORE_RATE
                           or (weak and kind in ("random_opponent", "policy_random_opponent"))
                           or (weak and kind == "noisy_opponent" and rng.random() < NOISY_RANDOM_RATE))
            if random_move:
                move = rng.choice(board.legal_moves())
            elif weak and kind == "policy_engine_opponent":
                move = uci_to_iccs(engine.best_move(uci_moves, OPPONENT_NODES))
            elif policy is not None and not weak:
                move = policy(board)
            else:
                move = label
            board.push(move)
        except InputError as exc:
            raise RuntimeError(f"engine and rules disagree (seed {seed}, after {' '.join(moves)!r}): {exc}") from exc
        moves.append(move)
        labels.append(label)
        uci_moves.append(iccs_to_uci(move))
    return {"kind": kind, "moves": " ".join(moves), "labels": " ".join(labels), "plies": len(moves),
            "result": outcome.result, "winner": outcome.winner, "reason": outcome.reason}


def load_games(path: Path) -> list[dict]:
    """Read games.jsonl in game index order (the file holds them in the order the workers finished, which varies from
    run to run), cutting off a torn last line left by an interrupted run."""
    if not path.exists():
        return []
    games, good_bytes = [], 0
    with path.open("rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                games.append(json.loads(raw))
            except json.JSONDecodeError:
                break
            good_bytes += len(raw)
    if good_bytes != path.stat().st_size:
        with path.open("rb+") as f:
            f.truncate(good_bytes)
    return sorted(games, key=lambda game: game["index"])


def split_of(moves: str) -> str:
    bucket = int(hashlib.sha1(moves.encode()).hexdigest(), 16) % 100
    return next(name for name, upto in SPLITS if bucket < upto)


def write_splits(games: list[dict], out: Path) -> dict[str, int]:
    lines: dict[str, list[str]] = {name: [] for name, _ in SPLITS}
    for game in sorted(games, key=lambda g: g["index"]):
        lines[split_of(game["moves"])].append(game["moves"])
    for name, rows in lines.items():
        (out / f"{name}.txt").write_text("".join(row + "\n" for row in rows))
    return {name: len(rows) for name, rows in lines.items()}


def write_position_fixture(games: list[dict], path: Path, size: int, seed: int = 0) -> int:
    """Sample FENs from real self-play games for the rules cross-check test (one position per game,
    plus final positions of games that ended with no legal move, so mate/stalemate get checked too)."""
    rng = random.Random(seed)
    picked = rng.sample(games, min(size, len(games)))
    fens: dict[str, None] = {}
    for game in picked:
        moves = game["moves"].split()
        fens[Board.from_moves(moves[: rng.randint(0, len(moves))], max_plies=None).fen()] = None
    terminal = [g for g in games if g["reason"] in ("checkmate", "stalemate")]
    for game in rng.sample(terminal, min(len(terminal), max(1, size // 20))):
        fens[Board.from_moves(game["moves"], max_plies=None).fen()] = None
    header = (f"# {len(fens)} Xiangqi positions sampled from fairy-stockfish self-play games "
              "(edgeinfer.export.xiangqi_data --fixture); one FEN per line\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "".join(fen + "\n" for fen in fens))
    return len(fens)


def _check_config(out: Path, config: dict) -> None:
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != config:
            raise SystemExit(f"{path} was written with different settings {old}; "
                             f"rerun with those or use another --out (now {config})")
    else:
        path.write_text(json.dumps(config, indent=1) + "\n")


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Two runs appending to one games.jsonl would write duplicate games; refuse the second."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit(f"another run is already writing to {out}") from None
        yield


_worker: dict = {}  # per worker process: its engine and the settings, set by _start_worker


def _start_worker(engine_path: str, settings: tuple, policy_bundle: str | None) -> None:
    _worker["engine_path"] = engine_path
    _worker["engine"] = UciEngine(engine_path)
    _worker["settings"] = settings
    _worker["policy"] = None
    if policy_bundle:
        import edgeinfer
        from edgeinfer.xiangqi.mover import MoveModel

        mover = MoveModel(edgeinfer.load(policy_bundle, device="cpu", threads=1))
        _worker["policy"] = lambda board: mover.best(board).move


def _play_index(index_and_attempt: tuple[int, int]) -> dict:
    index, attempt = index_and_attempt
    base_seed, label_nodes, max_plies, opening = _worker["settings"]
    seed = game_seed(base_seed, index, attempt)
    for _ in range(ENGINE_TRIES):
        try:
            return {"index": index, "seed": seed,
                    **play_game(_worker["engine"], seed, label_nodes, max_plies, opening, _worker["policy"])}
        except EngineTimeout as exc:  # the same game again on a fresh engine: the seed stays the index's
            print(f"game {index}: {exc}; restarting it on a fresh engine", flush=True)
            _worker["engine"] = UciEngine(_worker["engine_path"])
    raise RuntimeError(f"game {index}: the engine hung {ENGINE_TRIES} times on it")


def generate(args: argparse.Namespace) -> list[dict]:
    """Play the missing game indices on --workers engine processes, appending each game as it ends."""
    out: Path = args.out
    config = {"seed": args.seed, "label_nodes": args.label_nodes, "max_plies": args.max_plies,
              "opening_plies": list(args.opening_plies)}
    if args.policy:
        config["policy"] = policy_identity(args.policy)
    _check_config(out, config)
    games_path = out / "games.jsonl"
    games = load_games(games_path)
    done = {g["index"] for g in games}
    seen = {g["moves"] for g in games}
    attempts = {i: 0 for i in range(args.games) if i not in done}  # the seed each index plays next
    if not attempts:
        return games
    settings = (args.seed, args.label_nodes, args.max_plies, args.opening_plies)
    start = time.perf_counter()

    def out_of_time() -> bool:
        return bool(args.minutes) and time.perf_counter() - start > 60 * args.minutes

    todo, positions = list(attempts), sum(g["plies"] for g in games)
    with (games_path.open("a") as f, tqdm(total=len(todo), desc="labelled games", unit="game") as bar,
          multiprocessing.get_context("spawn").Pool(
              args.workers, _start_worker, (args.engine, settings, args.policy and str(args.policy))) as pool):
        while todo and not out_of_time():  # rounds: a game that repeats an earlier one goes again, next seed
            repeated = []
            for record in pool.imap_unordered(_play_index, [(i, attempts[i]) for i in todo]):
                if out_of_time():
                    break  # the games in flight are dropped; a later run plays their indices
                if record["moves"] in seen:
                    attempts[record["index"]] += 1
                    if attempts[record["index"]] == MAX_ATTEMPTS:
                        raise RuntimeError(f"game {record['index']}: {MAX_ATTEMPTS} seeds all repeated earlier games")
                    repeated.append(record["index"])
                    continue
                f.write(json.dumps(record) + "\n")
                f.flush()
                seen.add(record["moves"])
                games.append(record)
                positions += record["plies"]
                bar.update()
                bar.set_postfix(positions=positions)
            todo = repeated
    elapsed = time.perf_counter() - start
    played = len(games) - len(done)
    print(f"played {played} games in {elapsed:.0f} s ({args.workers * elapsed / max(played, 1):.2f} s/game per worker)")
    return games


def policy_identity(bundle: Path) -> str:
    """What names the policy in config.json: its manifest's digest of the ONNX graph, so a resumed run plays the
    same model."""
    from edgeinfer.bundle import Manifest

    _, manifest = Manifest.read(bundle)
    return manifest["sha256"][manifest["files"]["model"]]


def _opening(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi or lo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, default=12000, help="number of game indices to have (default 12000)")
    parser.add_argument("--out", type=Path, default=Path("data/xiangqi"))
    parser.add_argument("--label-nodes", type=int, default=1000,
                        help="engine node budget of each position's label move (default 1000)")
    parser.add_argument("--workers", type=int, default=1, help="engine processes playing games at once")
    parser.add_argument("--minutes", type=float, help="stop after this long (resume later for the rest)")
    parser.add_argument("--max-plies", type=int, default=DEFAULT_MAX_PLIES, help="draw after this many plies")
    parser.add_argument("--opening-plies", type=_opening, default=(2, 8), metavar="LO-HI",
                        help="random legal plies before the engine takes over (default 2-8)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; game i uses a seed derived from it and i")
    parser.add_argument("--engine", default=shutil.which("fairy-stockfish") or DEFAULT_ENGINE)
    parser.add_argument("--policy", type=Path, metavar="BUNDLE",
                        help="a Xiangqi bundle whose model plays the strong side against a random mover or the engine "
                             f"at {OPPONENT_NODES} node (the positions it reaches, labelled by the engine)")
    parser.add_argument("--fixture", type=Path, help="also write sampled FENs here (tests/data/xiangqi_positions.txt)")
    parser.add_argument("--fixture-size", type=int, default=2500)
    args = parser.parse_args(argv)

    with _exclusive(args.out):
        games = generate(args)
        counts = write_splits(games, args.out)
    reasons = Counter(f"{g['result']} {g['reason']}" for g in games)
    plies = sum(g["plies"] for g in games) / max(len(games), 1)
    print(f"{len(games)} games in {args.out / 'games.jsonl'} (mean {plies:.0f} plies); "
          + ", ".join(f"{name} {n}" for name, n in counts.items()))
    print("results: " + ", ".join(f"{key}: {n}" for key, n in reasons.most_common()))
    if args.fixture:
        n = write_position_fixture(games, args.fixture, args.fixture_size)
        print(f"wrote {n} positions to {args.fixture}")


if __name__ == "__main__":
    main()
