"""Synthesizer attention against dot-product attention at the same compute, on the dialogue data.

    python -m edgeinfer.export.chat_data --out data/synth                                    # data (once, CPU)
    python -m edgeinfer.export.train_synth --data data/synth --work build/synth --device cuda  # train: model.pt each
    python -m edgeinfer.export.train_synth --data data/synth --work build/synth --export-only  # bundles, figures
    python benchmarks/synthesizer.py --work build/synth                                        # decode speed

Every attention kind (`GPTConfig.attention_kind`) trains the same GPT shape on the same batches in the same order
(same seed, steps, batch size and learning-rate schedule): only the attention layers differ. Training reads only
the .npz splits of `chat_data` and imports only torch, numpy and tqdm, so it runs on a machine without the data
sources; it writes `<work>/<kind>/model.pt` and `training.json`. `--export-only` (CPU) measures each model's
validation and test loss in float32, exports it to `<work>/<kind>/bundle` (parity-checked like every bundle) and
writes its row of `<work>/figures.json` (kinds exported earlier keep theirs). The loss is over every next token of
a conversation, both speakers. `--max-minutes` caps each kind's time (its schedule then decays against the cap):
a kind that hits it runs fewer steps, which `steps_run` in the figures shows.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from .gpt import GPT, GPTConfig
from .synthesizer import ATTENTION_KINDS
from .train_gpt import Batch, TrainConfig, evaluate, train

MAX_POSITIONS = 256
PAD = 0  # padding sits after each row's last token and is never a target, so its id does not matter

Example = tuple[np.ndarray, np.ndarray]  # token ids, segment ids


def load_split(path: Path) -> list[Example]:
    """The conversations of one split as (ids, segments), cut at their offsets."""
    with np.load(path) as data:
        ids, segments = data["input_ids"].astype(np.int64), data["segment_ids"].astype(np.int64)
        offsets = data["offsets"]
    return [(ids[a:b][:MAX_POSITIONS], segments[a:b][:MAX_POSITIONS]) for a, b in itertools.pairwise(offsets)]


def collate(examples: list[Example]) -> Batch:
    """Right-padded ids, next-token targets (-100 on padding and after the last token), segments."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), PAD, dtype=torch.long)
    targets = torch.full((len(examples), width), -100, dtype=torch.long)
    segments = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (tokens, segs) in enumerate(examples):
        n = len(tokens)
        ids[row, :n] = torch.from_numpy(tokens)
        targets[row, : n - 1] = torch.from_numpy(tokens[1:])
        segments[row, :n] = torch.from_numpy(segs)
    return ids, targets, segments


def random_batches(examples: list[Example], batch_size: int, seed: int):
    rng = random.Random(seed)
    while True:
        yield collate([rng.choice(examples) for _ in range(batch_size)])


def eval_batches(examples: list[Example], size: int = 32):
    return lambda: (collate(examples[i : i + size]) for i in range(0, len(examples), size))


def model_config(args: argparse.Namespace, kind: str, vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, n_positions=MAX_POSITIONS, n_embd=args.embd, n_layer=args.layers,
                     n_head=args.heads, n_segments=2, gelu="tanh", dropout=args.dropout, attention_kind=kind,
                     synth_rank=args.synth_rank if kind == "random" else 0)


def vocab_size(data: Path) -> int:
    return int(json.loads((data / "stats.json").read_text())["vocab_size"])


def train_kind(args: argparse.Namespace, kind: str, train_set: list[Example], valid_set: list[Example]) -> dict:
    torch.manual_seed(args.seed)
    model = GPT(model_config(args, kind, vocab_size(args.data)))
    work = args.work / kind
    cfg = TrainConfig(steps=args.steps, lr=args.lr, min_lr=args.lr / 10, warmup=min(200, args.steps // 10),
                      eval_every=args.eval_every, seed=args.seed, device=args.device,
                      max_seconds=60 * args.max_minutes if args.max_minutes else None)
    print(f"{kind}: {sum(p.numel() for p in model.parameters()):,} parameters", file=sys.stderr)
    log = train(model, random_batches(train_set, args.batch_size, args.seed), eval_batches(valid_set), cfg, work)
    log["command"] = shlex.join(["python", "-m", "edgeinfer.export.train_synth", *sys.argv[1:]])
    log["n_parameters"] = sum(p.numel() for p in model.parameters())
    (work / "training.json").write_text(json.dumps(log) + "\n")
    torch.save({"state_dict": model.state_dict(), "config": model.cfg.to_dict()}, work / "model.pt")
    return log


def export_kind(args: argparse.Namespace, kind: str, valid_set: list[Example], test_set: list[Example]) -> dict:
    from .onnx_export import export_gpt_bundle

    work = args.work / kind
    checkpoint = torch.load(work / "model.pt", map_location="cpu")
    model = GPT(GPTConfig(**{**checkpoint["config"], "dropout": 0.0}))
    model.load_state_dict(checkpoint["state_dict"])
    log = json.loads((work / "training.json").read_text())
    manifest = export_gpt_bundle(model, work / "bundle", tokenizer_file=args.data / "tokenizer.json")
    return {
        "attention_kind": kind,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "steps_run": log["steps_run"],
        "train_seconds": log["seconds"],
        "device": log["config"]["device"],
        "valid_loss": round(evaluate(model, eval_batches(valid_set)), 4),
        "test_loss": round(evaluate(model, eval_batches(test_set)), 4),
        "parity_max_abs_diff": manifest["parity"]["max_abs_diff"],
        "cached": "values" if manifest["kv_cache"]["past_key"] is None else "keys and values",
        "bundle": str(work / "bundle"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/synth", type=Path)
    parser.add_argument("--work", default="build/synth", type=Path)
    parser.add_argument("--kinds", nargs="+", default=list(ATTENTION_KINDS), choices=ATTENTION_KINDS)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bfloat16 autocast); export is always on the CPU")
    parser.add_argument("--export-only", action="store_true", help="export --work's models and write figures.json")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="a time cap per kind (the schedule decays against it); steps_run shows if it bit")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embd", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--synth-rank", type=int, default=0, help="random synthesizer factor rank (0: full matrix)")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    valid_set = load_split(args.data / "valid.npz")
    if args.export_only:
        test_set = load_split(args.data / "test.npz")
        path = args.work / "figures.json"  # one row per kind; kinds exported earlier keep their rows
        rows = {row["attention_kind"]: row for row in json.loads(path.read_text())} if path.exists() else {}
        rows.update({kind: export_kind(args, kind, valid_set, test_set) for kind in args.kinds})
        figures = [rows[kind] for kind in ATTENTION_KINDS if kind in rows]
        path.write_text(json.dumps(figures, indent=1) + "\n")
        for row in figures:
            print(f"{row['attention_kind']:>10}: valid {row['valid_loss']:.4f}  test {row['test_loss']:.4f}  "
                  f"{row['n_parameters']:,} parameters  {row['steps_run']} steps in {row['train_seconds']} s  "
                  f"parity {row['parity_max_abs_diff']:.1e}")
        return
    train_set = load_split(args.data / "train.npz")
    for kind in args.kinds:
        train_kind(args, kind, train_set, valid_set)


if __name__ == "__main__":
    main()
