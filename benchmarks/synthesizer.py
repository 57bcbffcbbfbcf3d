"""Synthesizer attention against dot-product attention: validation loss and per-decode-step time side by side.

    python benchmarks/synthesizer.py --work build/synth [--prompt 64 --steps 64 --batches 1 8 --repeats 3]

Reads the bundles and `figures.json` that `python -m edgeinfer.export.train_synth --export-only` wrote, runs greedy
decode steps through the engine's own step function (`decode_step.step_times`, prefill excluded), the kinds
interleaved so that they share the machine's noise, and writes the table to results/synthesizer.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from decode_step import step_times

import edgeinfer

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("build/synth"))
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    figures = json.loads((args.work / "figures.json").read_text())
    models = {row["attention_kind"]: edgeinfer.load(row["bundle"], device="cpu", threads=args.threads)
              for row in figures}
    times = {kind: {b: [] for b in args.batches} for kind in models}
    for _ in range(args.repeats):
        for batch in args.batches:
            for kind, model in models.items():
                times[kind][batch] += step_times(model, batch, args.prompt, args.steps)
    for row in figures:
        row["ms_per_decode_step"] = {str(b): round(1e3 * statistics.median(t), 3)
                                     for b, t in times[row["attention_kind"]].items()}
    result = {"figures": figures, "prompt": args.prompt, "decode_steps": args.steps, "threads": args.threads,
              "repeats": args.repeats}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "synthesizer.json").write_text(json.dumps(result, indent=1) + "\n")
    header = ("| attention | parameters | cache | steps | valid loss | test loss | "
              + " | ".join(f"ms/step B={b}" for b in args.batches) + " |")
    lines = [header, "|" + "---|" * (6 + len(args.batches))]
    for row in figures:
        speed = " | ".join(f"{row['ms_per_decode_step'][str(b)]:.3f}" for b in args.batches)
        lines.append(f"| {row['attention_kind']} | {row['n_parameters']:,} | {row['cached']} | {row['steps_run']} | "
                     f"{row['valid_loss']:.4f} | {row['test_loss']:.4f} | {speed} |")
    table = "\n".join(lines)
    (RESULTS / "synthesizer.md").write_text(
        f"Prompt {args.prompt} tokens, {args.steps} greedy decode steps, {args.threads} thread(s), median of "
        f"{args.repeats} interleaved repeats; trained on {figures[0]['device']}.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
