"""Passages/s of the DGCNN reader: the bundle on onnxruntime against the same model in PyTorch eager.

Both run the same padded batches of dev-set (question, passage) pairs, featurised once up front and
length-bucketed as `Reader.answer` does, on the same number of threads; only the model calls are timed.
Without the training folder (`--weights`, train_dgcnn's --work) only the bundle is timed.
    python benchmarks/qa_throughput.py [--bundle runtime/bundles/qa-dgcnn] [--weights build/dgcnn] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import edgeinfer
from edgeinfer.export.qa_bundle import load_reader
from edgeinfer.qa.units import Window


def pairs(reader, data: Path, n: int) -> list[Window]:
    rows = []
    with data.open(encoding="utf-8") as f:
        for qi, line in enumerate(f):
            example = json.loads(line)
            q = reader.features.question(example["question"])
            for pi, passage in enumerate(example["passages"]):
                p = reader.features.passage(passage["text"])
                rows.append(Window(qi, pi, q, p, 0, len(p)))
            if len(rows) >= n:
                return rows[:n]
    return rows


def rate(run, batches: list[dict]) -> float:
    run(batches[0])  # warm-up
    started = time.perf_counter()
    count = 0
    for feeds in batches:
        run(feeds)
        count += len(feeds["p_chars"])
    return count / (time.perf_counter() - started)


def measure(bundle: str, weights: Path, data: Path, passages: int, threads: int, sizes=(1, 8, 32, 128)) -> list[dict]:
    """Passages/s of the bundle and of the PyTorch model at each batch size, on the same featurised batches."""
    torch.set_num_threads(threads)
    reader = edgeinfer.load(bundle, device="cpu", threads=threads)
    model = load_reader(weights) if (weights / "model.pt").is_file() else None
    rows = sorted(pairs(reader, data, passages), key=lambda r: (r.length, len(r.q)))

    def run_torch(feeds):
        with torch.inference_mode():
            model(**{k: torch.from_numpy(v) for k, v in feeds.items()})

    def run_ort(feeds):
        reader.session.run(None, feeds)

    table = []
    for size in sizes:
        batches = [reader.features.feeds(rows[i : i + size]) for i in range(0, len(rows), size)]
        table.append({"batch": size, "edgeinfer": rate(run_ort, batches),
                      "torch_eager": rate(run_torch, batches) if model is not None else None})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="runtime/bundles/qa-dgcnn")
    parser.add_argument("--weights", type=Path, default=Path("build/dgcnn"))
    parser.add_argument("--data", type=Path, default=Path("data/qa/dev.jsonl"))
    parser.add_argument("--passages", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    table = measure(args.bundle, args.weights, args.data, args.passages, args.threads)
    print(f"{args.passages} dev passages, {args.threads} thread(s), passages/s")
    print("| batch | onnxruntime | PyTorch eager | speed-up |\n|---:|---:|---:|---:|")
    for row in table:
        eager = row["torch_eager"]
        print(f"| {row['batch']} | {row['edgeinfer']:.0f} | " + (f"{eager:.0f} | {row['edgeinfer'] / eager:.2f}x |" if eager else "- | - |"))


if __name__ == "__main__":
    main()
