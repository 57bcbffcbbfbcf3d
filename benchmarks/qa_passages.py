"""Passages/s of QA bundles end to end: `Reader.answer` on dev questions, text in, answers out (tokenizing or
segmenting, windows, the model calls, span decoding and voting all counted).

    python benchmarks/qa_passages.py [--bundles runtime/bundles/qa runtime/bundles/qa-dgcnn] [--questions 400]

Each bundle answers the same first `--questions` questions of data/qa/dev.jsonl with every passage they come with,
at its manifest's batch settings, once untimed, then `--repeats` times; the best time is reported.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import edgeinfer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", nargs="+", default=["runtime/bundles/qa", "runtime/bundles/qa-dgcnn"])
    parser.add_argument("--data", type=Path, default=Path("data/qa/dev.jsonl"))
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with args.data.open(encoding="utf-8") as f:
        examples = [json.loads(line) for _, line in zip(range(args.questions), f)]
    questions = [ex["question"] for ex in examples]
    passages = [[p["text"] for p in ex["passages"]] for ex in examples]
    n = sum(map(len, passages))
    results = {}
    for bundle in args.bundles:
        reader = edgeinfer.load(bundle, device="cpu", threads=args.threads)
        reader.answer(questions, passages)
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            reader.answer(questions, passages)
            best = min(best, time.perf_counter() - started)
        results[bundle] = {"passages": n, "seconds": round(best, 3), "passages_per_s": round(n / best, 1)}
        print(bundle, results[bundle], flush=True)
    print(json.dumps({"threads": args.threads, "questions": len(questions), "results": results}))


if __name__ == "__main__":
    main()
