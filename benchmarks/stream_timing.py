"""Decode speed through the public API: `model.stream` greedy, ms per token after the first and time to first token.

`python benchmarks/stream_timing.py BUNDLE [--batch 1 16] [--prompt 128] [--new 64] [--repeats 3] [--huge-pages]`;
run it under two checkouts in turn to compare them (the numbers include every layer a user's call goes through).
--huge-pages moves the weights into 2 MiB pages after loading (`CausalLM.use_huge_pages`), as a server's engine does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

import edgeinfer


def timing(model, batch: int, prompt_len: int, new: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    per_token, first_token = [], []
    for _ in range(repeats):
        prompts = rng.integers(200, model.vocab_size - 1, (batch, prompt_len)).tolist()
        start, counts, steps = time.perf_counter(), [0] * batch, []
        for event in model.stream(prompts, max_new_tokens=new, min_new_tokens=new, stop_token_ids=[],
                                  do_sample=False):
            counts[event.request] += 1
            if len(steps) < min(counts):  # step k is done when every row has its k-th token (a burst of
                steps.append(time.perf_counter())  # prompts is prefilled over several rounds)
        first_token.append(steps[0] - start)
        per_token.append((steps[-1] - steps[0]) / (new - 1))
    return {"ms_per_token": round(1e3 * statistics.median(per_token), 3),
            "ttft_ms": round(1e3 * statistics.median(first_token), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--huge-pages", action="store_true", help="move the weights into huge pages first")
    args = parser.parse_args()
    start = time.perf_counter()
    model = edgeinfer.load(args.bundle, device="cpu", threads=args.threads)
    report = {"load_s": round(time.perf_counter() - start, 3)}
    if args.huge_pages:
        start = time.perf_counter()
        report["huge_pages_mb"] = round(model.use_huge_pages() / 2**20, 1)
        report["huge_pages_s"] = round(time.perf_counter() - start, 3)
    report.update({f"B={b}": timing(model, b, args.prompt, args.new, args.repeats) for b in args.batch})
    print(json.dumps(report))


if __name__ == "__main__":
    main()
