"""DGCNN reader size, vocabulary and training budget against answer quality: one training run per configuration.

    python benchmarks/qa_sizes.py [--minutes 10] [--configs base small large words-4k words-30k base-2x]

Each configuration trains from scratch with `edgeinfer.export.train_dgcnn` (same seed, same data, same share of the
template questions, one thread) for the same wall-clock budget (`base-2x`: twice it), then reports what train_dgcnn
measured: dev, test and held-out-source (ood) F1 and no-answer accuracy with the threshold calibrated on dev, the
parameters and the steps run. Runs land in build/qa-sizes/NAME; the table goes to results/qa_sizes.{json,md}.
Configurations already run (their training.json present) are read, not rerun, so the sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgeinfer.export import train_dgcnn

RESULTS = Path(__file__).parent / "results"

# name -> (train_dgcnn options, budget multiple)
CONFIGS: dict[str, tuple[list[str], float]] = {
    "base": (["--dim", "96", "--word-dim", "64", "--max-words", "12000"], 1.0),
    "small": (["--dim", "64", "--word-dim", "48", "--max-words", "12000"], 1.0),
    "large": (["--dim", "144", "--word-dim", "96", "--max-words", "12000"], 1.0),
    "words-4k": (["--dim", "96", "--word-dim", "64", "--max-words", "4000"], 1.0),
    "words-30k": (["--dim", "96", "--word-dim", "64", "--max-words", "30000"], 1.0),
    "base-2x": (["--dim", "96", "--word-dim", "64", "--max-words", "12000"], 2.0),
}


def run(name: str, minutes: float, args: argparse.Namespace) -> dict:
    """Train one configuration (unless its training.json exists) and return its row."""
    work = args.work / name
    record_path = work / "training.json"
    if not record_path.exists():
        options, multiple = CONFIGS[name]
        train_dgcnn.main([
            "--data", str(args.data), "--work", str(work), "--steps", "1000000", "--time-limit",
            str(minutes * multiple * 60), "--template-share", str(args.template_share), "--threads", "1", *options])
    record = json.loads(record_path.read_text())
    metrics = record["metrics"]
    return {"config": name, "options": " ".join(CONFIGS[name][0]), "minutes": round(record["train_seconds"] / 60, 1),
            "parameters": record["parameters"], "steps": record["steps"],
            **{f"{split}_f1": round(metrics[split]["f1"], 3) for split in ("dev", "test", "ood")},
            **{f"{split}_no_answer": round(metrics[split]["no_answer_acc"], 3) for split in ("test", "ood")},
            "test_score": round(metrics["test"]["score"], 3)}


def write(rows: list[dict], args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "qa_sizes.json").write_text(json.dumps({"minutes": args.minutes, "rows": rows}, indent=1))
    columns = list(rows[0])
    title = (f"# DGCNN reader: size, vocabulary and budget ({time.strftime('%Y-%m-%d')}, "
             f"{args.minutes:g} min per run, 1 thread, from scratch)")
    lines = [title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    (RESULTS / "qa_sizes.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/qa"))
    parser.add_argument("--work", type=Path, default=Path("build/qa-sizes"))
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each run (base-2x: twice)")
    parser.add_argument("--template-share", type=float, default=0.2)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    rows = []
    for name in args.configs:
        rows.append(run(name, args.minutes, args))
        write(rows, args)
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
