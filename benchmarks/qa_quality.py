"""Answer quality of an extractive-QA bundle through the runtime `Reader`, per split of data/qa.

EM and character F1 on answerable questions (no answer counts 0), no-answer accuracy on unanswerable ones
(the reader returned nothing), and (EM+F1)/2. `ood` is the source kept out of training; `outside` is manpages-zh,
which nothing here trains on (`python -m edgeinfer.export.qa_data --outside` writes it); `everyday` is
benchmarks/data/qa_everyday.jsonl: 30 questions written by hand as a user asks them (encyclopedic, news, how-to; 6
without an answer in their context), not by the question generator the other splits come from.
    python benchmarks/qa_quality.py [--bundle runtime/bundles/qa] [--splits test ood outside everyday] [--limit 1000]
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

import edgeinfer
from edgeinfer.export import qa_data
from edgeinfer.export.qa_data import char_f1

EVERYDAY = Path(__file__).parent / "data" / "qa_everyday.jsonl"


def evaluate(reader, examples: list[dict], threshold: float | None) -> dict:
    """Scores of one split, overall and per question kind."""
    found = reader.answer([ex["question"] for ex in examples], [[p["text"] for p in ex["passages"]] for ex in examples],
                          threshold=threshold)
    by_kind: dict[str, list[float]] = defaultdict(list)
    em = f1 = null_ok = 0.0
    answerable = unanswerable = 0
    for ex, answers in zip(examples, found, strict=True):
        pred = answers[0].text if answers else ""
        if ex["answer"]:
            answerable += 1
            em += float(pred == ex["answer"])
            score = char_f1(pred, ex["answer"]) if pred else 0.0
            f1 += score
            by_kind[ex.get("kind", "")].append(score)
        else:
            unanswerable += 1
            null_ok += float(not answers)
    n = max(1, answerable)
    return {"em": round(em / n, 4), "f1": round(f1 / n, 4), "score": round((em + f1) / (2 * n), 4),
            "no_answer_acc": round(null_ok / max(1, unanswerable), 4), "answerable": answerable,
            "unanswerable": unanswerable,
            "f1_by_kind": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_kind.items()) if len(v) >= 10}}


def read_split(data: Path, split: str) -> list[dict]:
    """A split of data/qa, or the hand-written `everyday` questions (one context each) in the same form."""
    if split != "everyday":
        return qa_data.read_split(data, split)
    with EVERYDAY.open(encoding="utf-8") as f:
        return [{"question": ex["question"], "answer": ex["answer"], "kind": "everyday",
                 "passages": [{"text": ex["context"]}]} for ex in map(json.loads, f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="runtime/bundles/qa")
    parser.add_argument("--data", type=Path, default=Path("data/qa"))
    parser.add_argument("--splits", nargs="+", default=["test", "ood"])
    parser.add_argument("--limit", type=int, default=1000, help="questions per split (a seeded sample)")
    parser.add_argument("--threshold", type=float, default=None, help="override the bundle's threshold")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    reader = edgeinfer.load(args.bundle, device="cpu", threads=args.threads)
    results = {"bundle": args.bundle, "threshold": reader.defaults.get("threshold") if args.threshold is None else args.threshold}
    for split in args.splits:
        examples = read_split(args.data, split)
        examples = random.Random(0).sample(examples, min(args.limit, len(examples)))
        results[split] = evaluate(reader, examples, args.threshold)
    print(json.dumps(results, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
