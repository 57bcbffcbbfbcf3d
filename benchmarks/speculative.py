"""Speculative decoding against plain decoding: tokens/s on copy-heavy, random and sampled prompts.

`python benchmarks/speculative.py [BUNDLE ...] [--speculate 6] [--new 64] [--repeats 3] [--drafts int8 int4]`
(default: the shipped chat bundle and the GPT-2-small-shaped bundle of `decode_step.py`, if built). Copy-heavy
prompts repeat a passage the answer continues (as answering over a given text, editing or a long dialogue history
do); random prompts draw ids uniformly; "misses" prompts repeat a few ids (so prompt lookup always finds a draft) and
are continued by sampling at temperature 1, which almost never agrees with a prompt-lookup draft: the cost of
drafting when it does not pay. Drafts come from prompt lookup, and with `--drafts` also from each named quantized
copy of the bundle as a draft model (`quantized_quality.quantized_copy`: the same weights in int8 or int4, a
fraction of the bytes a step reads). Greedy workloads must give identical tokens in every setting. One request at a
time (B=1), the settings interleaved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from quantized_quality import quantized_copy

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


def tokens_per_s(model, prompts: list[list[int]], options: dict, speculate: int, new: int,
                 draft=None) -> tuple[float, list[list[int]]]:
    out, start = [], time.perf_counter()
    for prompt in prompts:
        out.append(model.generate([prompt], max_new_tokens=new, min_new_tokens=new, stop_token_ids=[],
                                  speculate=speculate, draft=draft, **options)[0].token_ids)
    return len(prompts) * new / (time.perf_counter() - start), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", type=Path)
    parser.add_argument("--speculate", type=int, default=6)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--drafts", nargs="*", default=[], choices=["int8", "int4"],
                        help="also draft with these quantized copies of each bundle")
    args = parser.parse_args()
    bundles = args.bundles or [default_bundle("chat"), *([GPT2_SMALL] if GPT2_SMALL.is_dir() else [])]
    report = {}
    for bundle in bundles:
        model = edgeinfer.load(bundle, device="cpu")
        # a model and its draft take turns on the same cores: both open with idle threads that sleep, not spin
        drafting = edgeinfer.load(bundle, device="cpu", allow_spinning=False)
        # setting -> (model, speculate, draft model): plain decoding, prompt lookup, each draft bundle
        drafts = {kind: edgeinfer.load(quantized_copy(bundle, kind), device="cpu", allow_spinning=False)
                  for kind in args.drafts}
        settings = {"plain": (model, 0, None), "prompt_lookup": (model, args.speculate, None),
                    **{f"draft_{kind}": (drafting, args.speculate, draft) for kind, draft in drafts.items()}}
        for name, (prompts, options) in workloads(model).items():
            rates = {setting: [] for setting in settings}
            for _ in range(args.repeats):
                outputs = {}
                for setting, (runner, speculate, draft) in settings.items():
                    rate, outputs[setting] = tokens_per_s(runner, prompts, options, speculate, args.new, draft)
                    rates[setting].append(rate)
                if not options["do_sample"]:
                    assert all(out == outputs["plain"] for out in outputs.values()), "speculative greedy output differs"
            plain = statistics.median(rates["plain"])
            row = {"plain_tokens_per_s": round(plain, 1)}
            for setting in list(settings)[1:]:
                rate = statistics.median(rates[setting])
                row |= {f"{setting}_tokens_per_s": round(rate, 1), f"{setting}_ratio": round(rate / plain, 2)}
            report[f"{bundle.name}/{name}"] = row
            print(json.dumps({f"{bundle.name}/{name}": row}), flush=True)
    print(json.dumps({"speculate": args.speculate, "new": args.new, "results": report}, indent=1))


if __name__ == "__main__":
    main()
