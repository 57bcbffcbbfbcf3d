"""What every engine script shares: reading the run spec, the timing protocol, and the one JSON line it prints.

Engine scripts run under different interpreters (the main environment, or build/bench/venv-peers), so this module
imports only the standard library. Each engine supplies `load()` and a `generate(rows, n)` that returns every row's
generated ids, the seconds from the call's start at which each step's tokens came out, and the call's total seconds;
this module does the rest the same way for all.

A spec with `"gate": true` asks for outputs only (one untimed call per batch size): the driver's correctness gate,
run before any timing.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

Generate = Callable[[list[list[int]], int], tuple[list[list[int]], list[float], float]]
Answer = Callable[[list[str], list[str]], list[tuple[int, int]]]  # questions, contexts -> best span's char offsets


def read_spec() -> tuple[str, dict]:
    """(`prepare` or `run`, the spec the driver wrote): checkpoint, artifact, prompts, batches, new_tokens, threads."""
    if len(sys.argv) != 3 or sys.argv[1] not in ("prepare", "run"):
        sys.exit(f"usage: {sys.argv[0]} prepare|run SPEC.json")
    return sys.argv[1], json.loads(Path(sys.argv[2]).read_text())


def peak_rss_mb() -> float:
    """Peak resident set of this process so far, from /proc (VmHWM, KiB).

    Not getrusage's ru_maxrss: Linux carries that across fork + exec, so a child started by a large driver would
    report the driver's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(spec: dict, load: Callable[[], Generate], packages: tuple[str, ...]) -> None:
    """Load, then per batch size warm up and time one greedy run; print one JSON line with every batch's numbers.

    Repeats are separate processes started by the driver (interleaved with the other engines), so one timed run
    per batch here; the driver takes medians, and quantiles over the pooled per-token gaps.
    """
    t0 = time.perf_counter()
    generate = load()
    result: dict = {"load_s": time.perf_counter() - t0, "versions": {p: version(p) for p in packages}, "batches": {}}
    n = spec["new_tokens"]
    for batch in spec["batches"]:
        rows = spec["prompts"][:batch]
        if spec.get("gate"):
            result["batches"][str(batch)] = {"ids": generate(rows, n)[0]}
            continue
        started = time.perf_counter()
        generate(rows, 2)  # warm-up: the same prefill shape and one decode step (and torch.compile's compilation)
        warmup_s = time.perf_counter() - started
        ids, arrivals, total_s = generate(rows, n)
        if len(ids[0]) != n or len(arrivals) != n:
            raise RuntimeError(f"engine produced {len(ids[0])} tokens ({len(arrivals)} steps) for row 0, expected {n}")
        result["batches"][str(batch)] = {
            "prefill_ms": arrivals[0] * 1e3,
            "decode_ms_per_token": (total_s - arrivals[0]) / (n - 1) * 1e3,
            "token_gaps_ms": [(b - a) * 1e3 for a, b in itertools.pairwise(arrivals)],
            "tokens_per_s": batch * n / total_s,
            "warmup_s": warmup_s,
            "peak_rss_mb": peak_rss_mb(),
        }
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result), flush=True)


def engine_main(prepare: Callable[[dict], None] | None, load: Callable[[dict], Generate],
                packages: tuple[str, ...]) -> None:
    """A decode engine script's entry point: `prepare SPEC` makes its artifact (when it has one), `run SPEC` times it."""
    mode, spec = read_spec()
    if mode == "run":
        measure(spec, lambda: load(spec), packages)
    elif prepare is not None:
        prepare(spec)


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), without numpy: engines' venvs may lack it."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure_answers(spec: dict, load: Callable[[], Answer], packages: tuple[str, ...], min_items: int = 16) -> None:
    """Load, then per batch size warm up once and time calls until `min_items` questions were answered; print one
    JSON line with each batch's items/s (from the median call), and call-latency quantiles."""
    t0 = time.perf_counter()
    answer = load()
    result: dict = {"load_s": time.perf_counter() - t0, "versions": {p: version(p) for p in packages}, "batches": {}}
    for batch in spec["batches"]:
        questions = [t["question"] for t in spec["texts"][:batch]]
        contexts = [t["context"] for t in spec["texts"][:batch]]
        if spec.get("gate"):
            result["batches"][str(batch)] = {"spans": answer(questions, contexts)}
            continue
        answer(questions, contexts)  # warm-up
        times = []
        for _ in range(max(1, -(-min_items // batch))):
            started = time.perf_counter()
            answer(questions, contexts)
            times.append(time.perf_counter() - started)
        result["batches"][str(batch)] = {
            "items_per_s": batch / quantile(times, 0.5),
            "latency_ms": {f"p{q}": 1e3 * quantile(times, q / 100) for q in (50, 90, 99)},
            "calls_ms": [1e3 * t for t in times],
        }
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result), flush=True)
