"""Speculative decoding by prompt lookup against plain greedy decoding: tokens/s on copy-heavy and random prompts.

`python benchmarks/speculative.py [BUNDLE ...] [--speculate 6] [--new 64] [--repeats 3]` (default: the shipped chat
bundle and the GPT-2-small-shaped bundle of `decode_step.py`, if built). Copy-heavy prompts repeat a passage the
answer continues (as answering over a given text, editing or a long dialogue history do); random prompts draw ids
uniformly; "misses" prompts repeat a few ids (so prompt lookup always finds a draft) and are continued by sampling at
temperature 1, which almost never agrees with a draft: the cost of drafting when it does not pay. Greedy workloads
must give identical tokens with and without drafts. One request at a time (B=1), both settings interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

import edgeinfer
from edgeinfer.loader import default_bundle

GPT2_SMALL = Path("build/bench/gpt2-12x768x12-v50257-contrib")


GREEDY = {"do_sample": False}
SAMPLED = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0}


def workloads(model, n: int = 4) -> dict[str, tuple[list[list[int]], dict]]:
    """{name: (prompts, decoding options)}."""
    rng = np.random.default_rng(0)
    copy_heavy = []
    for _ in range(n):
        passage = rng.integers(200, model.vocab_size - 1, 24).tolist()
        copy_heavy.append(passage + passage + passage[:6])  # the passage twice, then its start again
    random_ids = [rng.integers(200, model.vocab_size - 1, 54).tolist() for _ in range(n)]
    few_ids = [rng.choice(rng.integers(200, model.vocab_size - 1, 6), 54).tolist() for _ in range(n)]
    return {"copy_heavy": (copy_heavy, GREEDY), "random": (random_ids, GREEDY), "misses": (few_ids, SAMPLED)}


def tokens_per_s(model, prompts: list[list[int]], options: dict, speculate: int,
                 new: int) -> tuple[float, list[list[int]]]:
    out, start = [], time.perf_counter()
    for prompt in prompts:
        out.append(model.generate([prompt], max_new_tokens=new, min_new_tokens=new, stop_token_ids=[],
                                  speculate=speculate, **options)[0].token_ids)
    return len(prompts) * new / (time.perf_counter() - start), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", type=Path)
    parser.add_argument("--speculate", type=int, default=6)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bundles = args.bundles or [default_bundle("chat"), *([GPT2_SMALL] if GPT2_SMALL.is_dir() else [])]
    report = {}
    for bundle in bundles:
        model = edgeinfer.load(bundle, device="cpu")
        for name, (prompts, options) in workloads(model).items():
            rates = {0: [], args.speculate: []}
            for _ in range(args.repeats):
                outputs = {}
                for speculate, measured in rates.items():
                    rate, outputs[speculate] = tokens_per_s(model, prompts, options, speculate, args.new)
                    measured.append(rate)
                if not options["do_sample"]:
                    assert outputs[0] == outputs[args.speculate], "speculative greedy output differs"
            plain, spec = statistics.median(rates[0]), statistics.median(rates[args.speculate])
            report[f"{bundle.name}/{name}"] = {"plain_tokens_per_s": round(plain, 1),
                                               "speculative_tokens_per_s": round(spec, 1),
                                               "ratio": round(spec / plain, 2)}
            print(json.dumps({f"{bundle.name}/{name}": report[f"{bundle.name}/{name}"]}), flush=True)
    print(json.dumps({"speculate": args.speculate, "new": args.new, "results": report}, indent=1))


if __name__ == "__main__":
    main()
