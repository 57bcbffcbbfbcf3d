"""What int8 and int4 weights cost the shipped decoders: validation perplexity at fp32, int8 and int4 side by side.

    python benchmarks/quantized_quality.py [--sequences 100] [--int4-blocks 32 64 128]

Quantizes each shipped decoder bundle's graph as `edgeinfer export --quantize` would (export/quantize.py) into
build/quality/<bundle>-<int8|int4BLOCK>/, then scores the same held-out sequences with all three through
`CausalLM.logits` (per-token cross-entropy, teacher-forced):
- xiangqi: one position from each of the first `--sequences` test-split games of data/xiangqi/games.jsonl, as the bundle reads
  it: the position's prompt (the board seen from the side to move), then fairy-stockfish's move; only the move's
  four characters are scored;
- chat: dialogues of data/chat/valid.npz, each turn's text re-encoded with the bundle's own tokenizer as
  [CLS] turn [SEP] turn [SEP] ... with the turn's speaker segment, at most max_positions tokens.
Also reports the top-1 agreement of each quantized bundle with fp32's next-token choice. Writes
results/quantized_quality.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
from driver import ROOT, write_results
from tokenizers import Tokenizer

import edgeinfer
from edgeinfer.bundle import Manifest
from edgeinfer.export.quantize import INT4_BLOCK, INT4_BLOCKS, RECORDS, quantize_weights
from edgeinfer.export.xiangqi_data import load_games, split_of
from edgeinfer.loader import default_bundle
from edgeinfer.xiangqi import Board
from edgeinfer.xiangqi.mover import MoveModel
from edgeinfer.xiangqi.tokens import move_tokens, oriented_move

WORK = ROOT / "build" / "quality"


def quantized_copy(bundle: Path, kind: str, int4_block: int | None = None) -> Path:
    """`bundle` with `kind` weights (int4 in blocks of `int4_block`), made once per graph under build/quality/."""
    digest = json.loads((bundle / "manifest.json").read_text())["sha256"]["model.onnx"][:12]
    out = WORK / f"{bundle.name}-{digest}-{kind}{int4_block or ''}"
    if (out / "manifest.json").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(bundle, out)
    quantize_weights(bundle / "model.onnx", out / "model.onnx", kind, int4_block)
    _, manifest = Manifest.read(out, verify=False)
    manifest["quantization"] = RECORDS[kind]
    manifest.write(out)
    return out


def xiangqi_sequences(bundle: Path, n: int, limit: int) -> list[tuple[list[int], list[int] | None, int]]:
    """(prompt + label move, segments as the bundle reads them, index of the first scored token) for the middle
    position of each game."""
    out = []
    mover = MoveModel(edgeinfer.load(bundle, device="cpu"))
    games = [g for g in load_games(ROOT / "data" / "xiangqi" / "games.jsonl") if split_of(g["moves"]) == "test"]
    for game in games[:n]:
        moves, labels = game["moves"].split(), game["labels"].split()
        board = Board.from_moves(moves[: len(moves) // 2], max_plies=None)
        prompt, segments = mover.prompt(board)
        out.append((prompt + move_tokens(oriented_move(labels[len(moves) // 2], board.side)),
                    None if segments is None else segments + [0] * 4, len(prompt)))
    return out


def chat_sequences(bundle: Path, n: int, limit: int) -> list[tuple[list[int], list[int], int]]:
    data = np.load(ROOT / "data" / "chat" / "valid.npz")
    source = Tokenizer.from_file(str(ROOT / "data" / "chat" / "tokenizer.json"))
    target = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    special = json.loads((bundle / "manifest.json").read_text())["special_tokens"]
    offsets, ids, segments = data["offsets"], data["input_ids"], data["segment_ids"]
    out = []
    for start, end in itertools.pairwise(offsets[: n + 1]):
        row, seg = ids[start:end].astype(int), segments[start:end].astype(int)
        tokens, types = [special["cls"]], [int(seg[0])]
        cuts = [0, *np.flatnonzero(np.diff(seg)) + 1, len(seg)]
        for a, b in itertools.pairwise(cuts):
            text = source.decode(row[a:b].tolist(), skip_special_tokens=True)
            turn = target.encode(text, add_special_tokens=False).ids + [special["sep"]]
            tokens += turn
            types += [int(seg[a])] * len(turn)
        out.append((tokens[:limit], types[:limit], 1))
    return out


def score(model, sequences) -> tuple[float, list[np.ndarray]]:
    """Mean next-token cross-entropy (nats) over the scored tokens of all sequences (from each one's `start`), and
    each sequence's next-token choices there."""
    total, count, choices = 0.0, 0, []
    for tokens, types, start in sequences:
        ids = np.array([tokens])
        logits = model.logits(ids, token_type_ids=None if types is None else np.array([types]))[0, start - 1 : -1]
        logits = logits - logits.max(-1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total -= float(log_probs[np.arange(len(tokens) - start), tokens[start:]].sum())
        count += len(tokens) - start
        choices.append(logits.argmax(-1))
    return total / count, choices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=100)
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--int4-blocks", type=int, nargs="+", default=[INT4_BLOCK], choices=INT4_BLOCKS)
    args = parser.parse_args()
    readers = {"xiangqi": xiangqi_sequences, "chat": chat_sequences}
    report, rows = {"sequences": args.sequences, "bundles": {}, "skipped": {}}, []
    for name, read in readers.items():
        bundle = default_bundle(name)
        limit = json.loads((bundle / "manifest.json").read_text())["model"]["max_positions"]
        sequences = read(bundle, args.sequences, limit)
        results, reference = {}, None
        for kind, block in [("none", None), ("int8", None), *(("int4", b) for b in args.int4_blocks)]:
            folder = bundle if kind == "none" else quantized_copy(bundle, kind, block)
            label = {"none": "fp32", "int8": "int8"}.get(kind, f"int4 b{block}")
            loss, choices = score(edgeinfer.load(folder, device="cpu"), sequences)
            reference = reference or choices
            agree = float(np.mean(np.concatenate([a == b for a, b in zip(choices, reference, strict=True)])))
            size = (folder / "model.onnx").stat().st_size
            results[label] = {"loss": loss, "perplexity": math.exp(loss), "top1_agreement_with_fp32": agree,
                             "model_bytes": size}
            rows.append(f"| {name} | {label} | {loss:.4f} | {math.exp(loss):.3f} | "
                        f"{agree:.3f} | {size / 1e6:.2f} |")
            print(rows[-1], flush=True)
        report["bundles"][name] = {"tokens": sum(len(t) - start for t, _, start in sequences), **results}
    table = "\n".join(["| bundle | weights | loss (nats/token) | perplexity | top-1 = fp32's | model MB |",
                       "|---|---|---|---|---|---|", *rows])
    note = (f"{args.sequences} held-out sequences per bundle (xiangqi: data/xiangqi/games.jsonl, chat: "
            "data/chat/valid.npz re-encoded), teacher-forced")
    write_results(args.results, "quantized_quality", report, table, note)


if __name__ == "__main__":
    main()
