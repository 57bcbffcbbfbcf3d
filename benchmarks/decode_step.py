"""Per-decode-step latency of the two attention targets on the same weights (random GPT-2-shaped model).

    python benchmarks/decode_step.py [--layers 12 --embd 768 --heads 12 --vocab 50257] [--prompt 128 --steps 64]

Exports one bundle per target (cached under build/bench/), then runs greedy decoding through the engine and
reports the median time of a decode step (prefill excluded) at batch 1 and 16, interleaving the targets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

import edgeinfer
from edgeinfer.lm.cache import KVCache
from edgeinfer.lm.step import Step


def export_bundles(args) -> dict[str, Path]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    shape = f"{args.layers}x{args.embd}x{args.heads}-v{args.vocab}"
    paths = {t: Path("build/bench") / f"gpt2-{shape}-{t}" for t in ("standard", "contrib")}
    missing = [t for t, p in paths.items() if not (p / "manifest.json").exists()]
    if missing:
        torch.manual_seed(0)
        config = GPT2Config(vocab_size=args.vocab, n_positions=1024, n_embd=args.embd, n_layer=args.layers,
                            n_head=args.heads)
        hf = GPT2LMHeadModel(config).eval()
        for target in missing:
            t0 = time.perf_counter()
            manifest = export_hf_checkpoint(hf, paths[target], attention=target)
            print(f"exported {target} in {time.perf_counter() - t0:.1f} s, parity {manifest['parity']['max_abs_diff']:.2e}",
                  flush=True)
    return paths


def step_times(model, batch: int, prompt: int, steps: int) -> list[float]:
    """Seconds per decode step (greedy, prefill excluded) through the engine's own step function."""
    rng = np.random.default_rng(0)
    cache = KVCache(model, batch, prompt + steps)
    step = Step(model, cache)
    logits = step.feed(rng.integers(0, model.vocab_size, (batch, prompt)).tolist())
    times = []
    for _ in range(steps):
        tokens = logits.argmax(-1)
        start = time.perf_counter()
        logits = step.decode(tokens)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--embd", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    models = {t: edgeinfer.load(p, device="cpu") for t, p in export_bundles(args).items()}
    results = {t: {b: [] for b in args.batches} for t in models}
    for _ in range(args.repeats):  # interleaved: both targets see the same machine noise
        for batch in args.batches:
            for target, model in models.items():
                results[target][batch] += step_times(model, batch, args.prompt, args.steps)
    table = {
        target: {batch: round(1e3 * statistics.median(times), 2) for batch, times in per.items()}
        for target, per in results.items()
    }
    print(json.dumps({"median_ms_per_decode_step": table, "prompt": args.prompt, "steps": args.steps}, indent=1))


if __name__ == "__main__":
    main()
