"""Closed-loop load on the request engine (no HTTP): what continuous batching gives a server's decoder.

`python benchmarks/engine_load.py [--clients 16] [--requests 64] [--prompt 128] [--new 64]` exports the
GPT-2-small-shaped bundle of `decode_step.py` (random weights, seed 0) once, then runs `--clients` threads that each
submit a greedy request, read its stream to the end, wait a random 0-20 ms (seeded) and submit the next, on one
engine with as many slots as clients. Reports generated tokens/s and time to first token, with requests that arrive
together prefilled in groups (the engine's way) and one by one, interleaved in one process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import numpy as np
from decode_step import export_bundles

import edgeinfer
from edgeinfer.lm import Request, decode_options
from edgeinfer.lm import engine as engine_module


def run_load(model, clients: int, requests: int, prompt: int, new: int, seed: int) -> dict:
    settings = decode_options(model, max_new_tokens=new, min_new_tokens=new, stop_token_ids=[], do_sample=False)
    engine = model.engine(slots=clients, capacity=prompt + new)
    engine.start()
    rng = np.random.default_rng(seed)
    prompts = rng.integers(200, model.vocab_size - 1, (requests, prompt)).tolist()
    pauses = rng.uniform(0, 0.02, requests).tolist()
    next_request, lock, first_token, tokens = iter(range(requests)), threading.Lock(), [], [0]

    def client() -> None:
        while True:
            with lock:
                index = next(next_request, None)
            if index is None:
                return
            time.sleep(pauses[index])
            sent = time.perf_counter()
            for k, event in enumerate(engine.submit(Request(prompts[index], settings)).events()):
                if k == 0:
                    first_token.append(time.perf_counter() - sent)
                with lock:
                    tokens[0] += event.token_id is not None
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    engine.stop()
    first_token.sort()
    return {"tokens_per_s": round(tokens[0] / elapsed, 1), "ttft_p50_ms": round(1e3 * statistics.median(first_token)),
            "ttft_p99_ms": round(1e3 * first_token[int(0.99 * (len(first_token) - 1))])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--target", choices=["contrib", "standard"], default="contrib")
    args = parser.parse_args()
    args.layers, args.embd, args.heads, args.vocab = 12, 768, 12, 50257
    model = edgeinfer.load(export_bundles(args)[args.target], device="cpu")
    grouped = engine_module.prefill_groups
    one_by_one = lambda lengths: [[i] for i in range(len(lengths))]
    results = {"grouped": [], "one_by_one": []}
    for repeat in range(args.repeats):  # interleaved: both see the same machine noise
        for name, groups in (("grouped", grouped), ("one_by_one", one_by_one)):
            engine_module.prefill_groups = groups
            results[name].append(run_load(model, args.clients, args.requests, args.prompt, args.new, repeat))
            print(name, results[name][-1], flush=True)
    engine_module.prefill_groups = grouped
    print(json.dumps({"clients": args.clients, "requests": args.requests, "prompt": args.prompt, "new": args.new,
                      "results": results}, indent=1))


if __name__ == "__main__":
    main()
