"""Passages/s of the DGCNN reader: the bundle on onnxruntime against the same model in PyTorch eager.

Both run the same padded batches of dev-set (question, passage) pairs, featurised once up front and
length-bucketed as `Reader.answer` does, on the same number of threads; only the model calls are timed.
    python benchmarks/qa_throughput.py [--bundle runtime/bundles/qa] [--weights build/dgcnn] [--threads 1]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="runtime/bundles/qa")
    parser.add_argument("--weights", type=Path, default=Path("build/dgcnn"))
    parser.add_argument("--data", type=Path, default=Path("data/qa/dev.jsonl"))
    parser.add_argument("--passages", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    reader = edgeinfer.load(args.bundle, device="cpu", threads=args.threads)
    model = load_reader(args.weights)
    rows = sorted(pairs(reader, args.data, args.passages), key=lambda r: (r.length, len(r.q)))

    def run_torch(feeds):
        with torch.inference_mode():
            model(**{k: torch.from_numpy(v) for k, v in feeds.items()})

    def run_ort(feeds):
        reader.session.run(None, feeds)

    print(f"{len(rows)} dev passages, {args.threads} thread(s), passages/s")
    print("| batch | onnxruntime | PyTorch eager | speed-up |\n|---:|---:|---:|---:|")
    for size in (1, 8, 32, 128):
        batches = [reader.features.feeds(rows[i : i + size]) for i in range(0, len(rows), size)]
        ort_rate, torch_rate = rate(run_ort, batches), rate(run_torch, batches)
        print(f"| {size} | {ort_rate:.0f} | {torch_rate:.0f} | {ort_rate / torch_rate:.2f}x |")


if __name__ == "__main__":
    main()
