"""Train the Xiangqi move GPT on engine-labelled positions and ship it as the default bundle.

    python -m edgeinfer.export.xiangqi_data --games 12000 --workers 2 --out data/xiangqi   # the positions (once)
    python -m edgeinfer.export.train_xiangqi --data data/xiangqi --out runtime/bundles/xiangqi-chars [--device cuda]
        [--init runtime/bundles/xiangqi-chars]   # go on from a bundle or a model.pt (--head squares: from
        # runtime/bundles/xiangqi, read back from its graph)
    python -m edgeinfer.export.train_xiangqi --head squares --init build/xiangqi/model.pt   # a square-pair head on
        # that trunk, written to runtime/bundles/xiangqi (the shipped models: the README's commands)

An example is a position's prompt (the start token and its 90 squares seen from the side to move, see
`edgeinfer.xiangqi.tokens`, each square's token with its segment, `edgeinfer.xiangqi.features`: its control,
whether a move from or to it gives check or mates, whether its piece is en prise, the cheapest enemy piece that
controls it and whether a move from or to it attacks a new target, unless --features says less; the
start token is `[SEEN]` where the position has occurred before in its game) followed by the 4 characters of
fairy-stockfish's move there; the loss covers the 4 move characters only (`--head characters`, a decoder bundle), or,
with `--head squares`, the move's (from, to) square pair under a head over the prompt's square states
(`xiangqi_policy.SquarePolicy`: the prompt alone is read, and a bundle of its own kind is written). The prompt's squares see each other both
ways (a prefix LM). --mirror-share of the examples (half by default) are mirrored left to right (files a <-> i): a
symmetry of the rules, not of the engine's choices, so the shipped model trains its last stages on none. Positions
come from every game of the train split (`xiangqi_data.split_of`) of each --data folder (the engine's games, and games
the model itself played with `xiangqi_data --policy`); the --held-out folder's (by default the first folder's) valid
split gives the validation loss and its test split stays for `benchmarks/xiangqi_moves.py`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
from pathlib import Path

import numpy as np
import torch

from edgeinfer.bundle import Manifest, square_pair_head
from edgeinfer.xiangqi import Board
from edgeinfer.xiangqi.features import RICHEST, SEGMENTS, coarser, square_segments
from edgeinfer.xiangqi.tables import FILES, RANKS
from edgeinfer.xiangqi.tokens import (
    MIRRORED_TOKEN,
    PIECE_OFFSET,
    PROMPT_TOKENS,
    SEEN,
    START,
    TOKEN_ID,
    VOCAB,
    oriented_move,
    oriented_squares,
    square_pair,
)

from .bundle_import import gpt_from_bundle, square_policy_from_bundle
from .gpt import GPT, GPTConfig
from .onnx_export import export_gpt_bundle
from .train_gpt import TrainConfig, evaluate, train
from .xiangqi_data import load_games, split_of
from .xiangqi_policy import (
    HEAD_DIM,
    MAX_LEGAL,
    MIRRORED_PAIR,
    NO_MOVE,
    SquarePolicy,
    export_policy_bundle,
)

EXAMPLE_TOKENS = PROMPT_TOKENS + 4


PARTS = ("squares", "labels", "wins", "seen", "segments", "legal")
LOSSES = ("all-pairs", "legal")  # --loss: the square-pair head's softmax over every pair, or the legal moves'


def game_positions(game: dict) -> tuple[np.ndarray, ...]:
    """Each position of a game as (squares seen from the side to move, int8 90), its label's 4 token ids, whether
    the label wins on the spot (the opponent is left without a legal move: mate, or stalemate, also a loss there),
    whether the position has occurred before in the game, its squares' segments under the richest feature set
    seen the same way (`features.square_segments`, uint16 90: computed here once, not per batch), and its legal
    moves' square pairs seen the same way (uint16 `MAX_LEGAL`, padded with `NO_MOVE`)."""
    board = Board(max_plies=None)
    squares, labels, wins, seen, segments, legal = [], [], [], [], [], []
    for move, label in zip(game["moves"].split(), game["labels"].split(), strict=True):
        squares.append(oriented_squares(board.squares, board.side))
        seen.append(board.repetitions() > 1)
        segments.append(square_segments(board, RICHEST))
        pairs = sorted(square_pair(oriented_move(m, board.side)) for m in board.legal_moves())
        legal.append(pairs + [NO_MOVE] * (MAX_LEGAL - len(pairs)))
        labels.append([TOKEN_ID[c] for c in oriented_move(label, board.side)])
        board.push(label)
        wins.append(not board.legal_moves())
        board.pop()
        board.push(move)
    return (np.array(squares, dtype=np.int8).reshape(-1, FILES * RANKS), np.array(labels, dtype=np.uint8).reshape(-1, 4),
            np.array(wins, dtype=bool), np.array(seen, dtype=bool),
            np.array(segments, dtype=np.uint16).reshape(-1, FILES * RANKS),
            np.array(legal, dtype=np.uint16).reshape(-1, MAX_LEGAL))


def split_positions(data: Path, workers: int) -> dict[str, tuple[np.ndarray, ...]]:
    """`game_positions` of each split in game index order, replayed from games.jsonl (cached beside it as
    positions-by-index-<games>.npz, which names the feature set of its segments)."""
    games = load_games(data / "games.jsonl")
    cache = data / f"positions-by-index-{len(games)}.npz"
    if cache.exists():
        arrays = np.load(cache)
        # a cache from before a part or a square feature existed is remade
        if all(f"train_{part}" in arrays for part in PARTS) and "features" in arrays and arrays["features"] == RICHEST:
            return {name: tuple(arrays[f"{name}_{part}"] for part in PARTS) for name in ("train", "valid", "test")}
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        replayed = pool.map(game_positions, games, chunksize=64)
    out = {}
    for name in ("train", "valid", "test"):
        chosen = [pos for game, pos in zip(games, replayed, strict=True) if split_of(game["moves"]) == name]
        chosen = chosen or [game_positions({"moves": "", "labels": ""})]  # no game in this split: empty arrays
        out[name] = tuple(np.concatenate(arrays) for arrays in zip(*chosen, strict=True))
    np.savez(cache, features=np.array(RICHEST),
             **{f"{name}_{part}": arr for name, arrays in out.items() for part, arr in zip(PARTS, arrays)})
    return out


def training_splits(data: list[Path], held_out: Path, workers: int) -> dict[str, tuple[np.ndarray, ...]]:
    """The train splits of every `data` folder, concatenated, and the valid and test splits of `held_out` (which
    need not be one of them: a stage can train on fresh games only and still be measured on the same positions)."""
    splits = {folder: split_positions(folder, workers) for folder in dict.fromkeys([held_out, *data])}
    train = tuple(np.concatenate(parts) for parts in zip(*(splits[folder]["train"] for folder in data), strict=True))
    return {"train": train, "valid": splits[held_out]["valid"], "test": splits[held_out]["test"]}


def mirrored(squares: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    """Per-square rows (n, 90) with the rows where `mirror` is True flipped left to right (a new array)."""
    boards = squares.reshape(-1, RANKS, FILES).copy()
    boards[mirror] = boards[mirror][:, :, ::-1]
    return boards.reshape(len(squares), -1)


def collate(squares: np.ndarray, labels: np.ndarray, seen: np.ndarray, segments: np.ndarray, mirror: np.ndarray,
            features: str | None = RICHEST, legal: np.ndarray | None = None):
    """Examples of the given positions (rows with mirror=True flipped left to right) as (ids, targets, segments),
    and the legal moves' square pairs when `legal` is given (`game_positions`'s, mirrored alike): segments are the
    squares' segments under `features` (`edgeinfer.xiangqi.features`, from the richest set's that `game_positions`
    gives; facts of the rules, so a mirrored board's are its own mirrored; None: no segments), 0 for the start token
    and the move."""
    boards = mirrored(squares, mirror)
    moves = np.where(mirror[:, None], np.asarray(MIRRORED_TOKEN)[labels], labels)
    ids = np.concatenate([np.where(seen, SEEN, START)[:, None], PIECE_OFFSET + boards, moves], axis=1)
    targets = np.full(ids.shape, -100)
    targets[:, PROMPT_TOKENS - 1 : -1] = ids[:, PROMPT_TOKENS:]
    prompt_segments = None
    if features:
        prompt_segments = np.zeros(ids.shape, dtype=np.int64)
        prompt_segments[:, 1:PROMPT_TOKENS] = coarser(mirrored(segments, mirror), features)
        prompt_segments = torch.from_numpy(prompt_segments)
    batch = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(targets), prompt_segments
    if legal is None:
        return batch
    legal = np.where(mirror[:, None], MIRRORED_PAIR[legal], legal)
    return *batch, torch.from_numpy(legal.astype(np.int64))


def batches(squares: np.ndarray, labels: np.ndarray, wins: np.ndarray, seen: np.ndarray, segments: np.ndarray,
            legal: np.ndarray, batch_size: int, seed: int, features: str | None, win_weight: float = 1.0,
            seen_weight: float = 1.0, mirror_share: float = 0.5, legal_moves: bool = False):
    """Endless random batches, each example mirrored left to right with probability `mirror_share` (and with its
    legal moves' square pairs if `legal_moves`: see `collate`). A position is
    drawn `win_weight` times as often as another if its label wins on the spot (a game has at most one such move, so
    mates are about 1% of positions), and `seen_weight` times as often if it is a repeat (the positions where going
    round again draws); both multiply."""
    rng = np.random.default_rng(seed)
    weights = np.where(wins, win_weight, 1.0) * np.where(seen, seen_weight, 1.0)
    cumulative = np.cumsum(weights / weights.sum())
    while True:
        rows = np.minimum(np.searchsorted(cumulative, rng.random(batch_size), side="right"), len(weights) - 1)
        yield collate(squares[rows], labels[rows], seen[rows], segments[rows], rng.random(batch_size) < mirror_share,
                      features, legal[rows] if legal_moves else None)


def in_order(squares: np.ndarray, labels: np.ndarray, seen: np.ndarray, segments: np.ndarray, legal: np.ndarray,
             limit: int, features: str | None, batch_size: int = 512, legal_moves: bool = False):
    """The first `limit` positions, unmirrored, in batches (validation)."""
    def run():
        for i in range(0, min(limit, len(squares)), batch_size):
            rows = slice(i, min(i + batch_size, limit))
            yield collate(squares[rows], labels[rows], seen[rows], segments[rows], np.zeros(len(squares[rows]), dtype=bool),
                          features, legal[rows] if legal_moves else None)
    return run


def held_out(split: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """A split's squares, labels, repeat flags, square segments and legal moves: what an evaluation reads."""
    squares, labels, _, seen, segments, legal = split
    return squares, labels, seen, segments, legal


def warm_start(model: GPT, path: Path) -> None:
    """Load a checkpoint's weights (a model.pt, or a float32 bundle folder read back by `bundle_import`: a square-pair
    bundle gives its trunk) into `model`; a segment table it lacks starts at zero, a table of fewer square features is
    repeated for each value of the added ones (`edgeinfer.xiangqi.features`: they add multiples of the smaller table's
    size), a `[SEEN]` token it lacks starts as a copy of the start token, and layers it lacks (--layers above the
    checkpoint's) are added on top with zero output projections (each way, training starts from the same function)."""
    if path.is_dir():
        square_pairs = square_pair_head(Manifest.read(path, verify=False)[1])
        state = (square_policy_from_bundle(path).gpt if square_pairs else gpt_from_bundle(path)).state_dict()
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    for name in ("wte.weight", "lm_head.weight"):
        if name in state and len(state[name]) == len(VOCAB) - 1:
            state[name] = torch.cat([state[name], state[name][START:START + 1]])
    table = state.get("wse.weight")
    if table is not None and model.wse is not None and len(table) < len(model.wse.weight):
        copies, rest = divmod(len(model.wse.weight) - 1, len(table) - 1)
        if not rest:  # each added feature's segments start as copies of the ones it refines
            state["wse.weight"] = torch.cat([table[:1], table[1:].repeat(copies, 1)])
    layers = len({name.split(".")[1] for name in state if name.startswith("blocks.")})
    added = model.blocks[layers:]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = set(missing) - {f"blocks.{layers + i}.{name}" for i, block in enumerate(added) for name in block.state_dict()}
    if unexpected or missing - {"wse.weight"}:
        raise SystemExit(f"{path} does not fit this model: missing {sorted(missing)}, unexpected {unexpected}")
    if missing:
        torch.nn.init.zeros_(model.wse.weight)
    for block in added:  # zero output projections: each added block passes its input through unchanged
        for projection in (block.attn.proj, block.mlp.proj):
            torch.nn.init.zeros_(projection.weight)
            torch.nn.init.zeros_(projection.bias)
    print(f"started from {path}", flush=True)


def warm_start_squares(model: SquarePolicy, path: Path) -> None:
    """Load a square-pair checkpoint (`save_checkpoint`'s, or a square-pair bundle read back) whole, or a character
    model's (any `warm_start` takes) into the trunk, the head starting fresh."""
    if path.is_dir() and square_pair_head(Manifest.read(path, verify=False)[1]):
        model.load_state_dict(square_policy_from_bundle(path).state_dict())  # strict, as for a checkpoint
        print(f"started from {path}", flush=True)
        return
    if path.is_file():
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if checkpoint.get("head") == "squares":
            model.load_state_dict(checkpoint["state_dict"])  # strict: a checkpoint of other sizes is named wrong here
            print(f"started from {path}", flush=True)
            return
    warm_start(model.gpt, path)


def save_checkpoint(model: GPT | SquarePolicy, path: Path) -> None:
    head = {"head": "squares", "head_dim": model.q.out_features} if isinstance(model, SquarePolicy) else {}
    torch.save({"config": model.cfg.to_dict(), **head, "state_dict": model.state_dict()}, path)


def load_checkpoint(path: Path) -> GPT | SquarePolicy:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**checkpoint["config"]))
    if checkpoint.get("head") == "squares":
        model = SquarePolicy(model, checkpoint["head_dim"])
    model.load_state_dict(checkpoint["state_dict"])
    return model


def save_tokenizer(path: Path, vocab: list[str]) -> None:
    """A character-level tokenizers.Tokenizer over the board prompt's symbols (decoding fuses characters back)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token=vocab[START]))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([t for t in vocab if t.startswith("[")])
    tokenizer.save(str(path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=[Path("data/xiangqi")], type=Path, nargs="+",
                        help="xiangqi_data folders whose train splits are trained on")
    parser.add_argument("--held-out", type=Path, help="the xiangqi_data folder whose valid and test splits measure "
                        "the model (default: the first --data folder)")
    parser.add_argument("--out", type=Path, help="the bundle folder (default: runtime/bundles/xiangqi-chars, or "
                        "runtime/bundles/xiangqi with --head squares)")
    parser.add_argument("--work", default="build/xiangqi", type=Path, help="checkpoint and training log")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embd", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="processes replaying games into positions")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--max-minutes", type=float, help="stop training after this long (the schedule follows)")
    parser.add_argument("--valid-positions", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--causal-prompt", action="store_true",
                        help="board squares see only earlier squares (default: they see each other, a prefix LM)")
    parser.add_argument("--features", choices=["none", *filter(None, SEGMENTS)], default=RICHEST,
                        help="what each square's segment says (edgeinfer.xiangqi.features; none: no segments)")
    parser.add_argument("--win-weight", type=float, default=1.0,
                        help="draw positions whose labelled move mates (or stalemates) this many times as often")
    parser.add_argument("--seen-weight", type=float, default=1.0,
                        help="draw repeated positions (their start token is [SEEN]) this many times as often")
    parser.add_argument("--mirror-share", type=float, default=0.5,
                        help="share of training examples mirrored left to right (0: none; the engine's own choices are "
                        "not mirror-symmetric, see benchmarks/README.md)")
    parser.add_argument("--ema", type=float, help="validate and ship a moving average of the weights with this decay "
                        "(e.g. 0.999) instead of the last weights")
    parser.add_argument("--init", type=Path, help="start from this model.pt or float32 bundle folder (a model with fewer "
                        "square features or fewer layers starts from the same function: see warm_start)")
    parser.add_argument("--head", choices=["characters", "squares"], default="characters",
                        help="score a move by its 4 characters after the prompt, or by a head over the prompt's square "
                        "pairs (xiangqi_policy.py; --init then gives the trunk, or a square-pair model.pt or bundle the whole)")
    parser.add_argument("--head-lr-scale", type=float, default=1.0,
                        help="the square-pair head's learning rate as a multiple of --lr")
    parser.add_argument("--loss", choices=LOSSES, default="all-pairs",
                        help="the square-pair head's cross-entropy: a softmax over all 8,100 square pairs, or over the "
                        "position's legal moves only (what the runtime scores)")
    parser.add_argument("--export-only", action="store_true", help="export the checkpoint in --work, no training")
    parser.add_argument("--no-bundle", action="store_true",
                        help="train and save the checkpoint only (a GPU machine without onnxruntime; then --export-only)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.mirror_share <= 1.0:
        parser.error(f"--mirror-share must be between 0 and 1, got {args.mirror_share}")
    if args.ema is not None and not 0.0 <= args.ema <= 1.0:
        parser.error(f"--ema must be between 0 and 1, got {args.ema}")
    if args.loss == "legal" and args.head != "squares":
        parser.error("--loss legal is the square-pair head's (--head squares); the character head's loss is per character")
    legal_moves = args.loss == "legal"

    args.out = args.out or Path("runtime/bundles", "xiangqi" if args.head == "squares" else "xiangqi-chars")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    features = None if args.features == "none" else args.features
    cfg = GPTConfig(vocab_size=len(VOCAB), n_positions=EXAMPLE_TOKENS, n_embd=args.embd, n_layer=args.layers,
                    n_head=args.heads, gelu="tanh", bidirectional_prefix=0 if args.causal_prompt else PROMPT_TOKENS,
                    n_segments=SEGMENTS[features])
    model = GPT(cfg) if args.head == "characters" else SquarePolicy(GPT(cfg), HEAD_DIM)
    if args.init:
        (warm_start if args.head == "characters" else warm_start_squares)(model, args.init)
    if args.export_only:
        model = load_checkpoint(args.work / "model.pt")
        log = json.loads((args.work / "training.json").read_text())
    else:
        splits = training_splits(args.data, args.held_out or args.data[0], args.workers)
        print({name: len(parts[0]) for name, parts in splits.items()}, "positions", flush=True)
        valid = in_order(*held_out(splits["valid"]), args.valid_positions, features, legal_moves=legal_moves)
        train_cfg = TrainConfig(steps=args.steps, lr=args.lr, min_lr=args.lr / 10, warmup=min(500, args.steps // 10),
                                eval_every=1000, seed=args.seed, device=args.device,
                                max_seconds=60 * args.max_minutes if args.max_minutes else None, ema=args.ema,
                                lr_scale={name: args.head_lr_scale for name in SquarePolicy.HEAD_PARAMETERS})
        log = train(model, batches(*splits["train"], args.batch_size, args.seed, features, args.win_weight,
                                   args.seen_weight, args.mirror_share, legal_moves), valid, train_cfg, args.work)
        test = in_order(*held_out(splits["test"]), args.valid_positions, features, legal_moves=legal_moves)
        log["test_loss"] = round(evaluate(model, test), 4)
        log["loss"] = args.loss
        log["positions"] = {name: len(pair[0]) for name, pair in splits.items()}
        log["batch_size"] = args.batch_size
        log["command"] = " ".join(["python -m edgeinfer.export.train_xiangqi", *(argv if argv is not None else sys.argv[1:])])
        (args.work / "training.json").write_text(json.dumps(log) + "\n")
        save_checkpoint(model, args.work / "model.pt")
        if args.no_bundle:
            print(f"saved {args.work / 'model.pt'}: valid loss {log['final_valid_loss']}, test loss {log['test_loss']}")
            return

    tokenizer, vocab = args.work / "tokenizer.json", VOCAB[:model.cfg.vocab_size]
    features = {count: name for name, count in SEGMENTS.items()}[model.cfg.n_segments]
    save_tokenizer(tokenizer, vocab)
    extra = {"vocab": vocab, "input": "board", **({"square_features": features} if features else {}), "training": {
        "positions": log["positions"], "steps": log.get("steps_run", log["config"]["steps"]),
        "batch_size": log["batch_size"], "seconds": log["seconds"], "device": log["config"].get("device", "cpu"),
        "final_valid_loss": log["final_valid_loss"], "test_loss": log["test_loss"], "command": log.get("command"),
        "loss": "nats per move character" if isinstance(model, GPT) else
                "nats per move over the legal moves' square pairs" if log.get("loss") == "legal" else
                "nats per move over the 8,100 square pairs",
    }}
    if isinstance(model, SquarePolicy):
        manifest = export_policy_bundle(model, args.out, tokenizer_file=tokenizer, extra={
            **extra, "move_score": "log-softmax over the legal moves of each move's (from, to) square-pair logit"})
    else:
        manifest = export_gpt_bundle(
            model, args.out, attention="standard", task="xiangqi", tokenizer_file=tokenizer,
            # a query-key mask lets move scoring feed every legal move's characters in one call (xiangqi/mover.py)
            attention_mask="query_key", special_tokens={"start": START, "pad": START},
            extra={**extra,
                   "move_score": "sum of the 4 character log-probabilities of each legal move after the position's prompt"})
    print(f"wrote {args.out}: valid loss {log['final_valid_loss']}, test loss {log['test_loss']}, "
          f"parity {manifest['parity']['max_abs_diff']:.2e}, {log['seconds']} s")


if __name__ == "__main__":
    main()
