"""Greedy decoding of edgeinfer against the engines users would pick instead, same weights, one process per run.

    python benchmarks/decode_peers.py [--quick] [--engines ...] [--batches 1 16] [--new-tokens 64] [--repeats 3]

Makes a random-weight GPT-2-shaped checkpoint (build/bench/hf-gpt2-small/ at the default shape), prepares each
engine's artifact from it (edgeinfer bundles, Optimum ONNX exports, CTranslate2 conversions), runs each engine once
untimed as the correctness gate (every row's greedy ids against edgeinfer-contrib's), then times the engines interleaved: every repeat starts each engine once, in a fresh process, so all of them see the same machine
noise and ratios are taken within a run. Writes results/decode_peers.json and results/decode_peers.md.
Optimum, onnxruntime-genai and CTranslate2 run in build/bench/venv-peers (benchmarks/peers/setup_venv.sh): optimum-onnx pins an older
transformers than the main environment has.
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
from pathlib import Path

import numpy as np
from driver import (
    BENCH,
    ROOT,
    Engine,
    available,
    copy_bandwidth,
    engine_env,
    gate_all,
    machine,
    prepare_all,
    results_folder,
    run_all,
    write_results,
    write_spec,
)

REFERENCE = "edgeinfer-contrib"  # the correctness gate compares every engine's greedy ids with this one's


ENGINES = {
    "edgeinfer-contrib": Engine("engine_edgeinfer.py", False, "edgeinfer-contrib", {"attention": "contrib"}),
    "edgeinfer-int8": Engine("engine_edgeinfer.py", False, "edgeinfer-contrib-int8",
                             # random weights give small logits next to int8 error: the gate below judges tokens
                             {"attention": "contrib", "quantize": "int8", "tolerance": 0.5}),
    "edgeinfer-int4": Engine("engine_edgeinfer.py", False, "edgeinfer-contrib-int4",
                             {"attention": "contrib", "quantize": "int4", "tolerance": 0.5}),
    "edgeinfer-standard": Engine("engine_edgeinfer.py", False, "edgeinfer-standard", {"attention": "standard"}),
    "edgeinfer-unfused": Engine("engine_edgeinfer.py", False, "edgeinfer-unfused", {"attention": "unfused"}),
    "hf-torch": Engine("engine_hf_torch.py", False),
    "hf-torch-compile": Engine("engine_hf_torch.py", False, None, {"compile": True}),
    "optimum": Engine("engine_optimum.py", True, "optimum"),
    "genai": Engine("engine_genai.py", True, "optimum"),  # Optimum's export, plus a genai_config.json
    "ct2-fp32": Engine("engine_ctranslate2.py", True, "ct2-float32", {"quantization": "float32"}),
    "ct2-int8": Engine("engine_ctranslate2.py", True, "ct2-int8", {"quantization": "int8"}),
}


def make_checkpoint(args) -> Path:
    """The random-weight GPT2LMHeadModel every engine starts from, saved once with save_pretrained."""
    full = (args.layers, args.embd, args.heads, args.vocab) == (12, 768, 12, 50257)
    folder = BENCH / ("hf-gpt2-small" if full else f"hf-gpt2-{args.layers}x{args.embd}x{args.heads}-v{args.vocab}")
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    print(f"creating checkpoint {folder.relative_to(ROOT)}", flush=True)
    torch.manual_seed(0)
    last = args.vocab - 1  # GPT-2's <|endoftext|> is its last id, whatever the vocabulary size
    config = GPT2Config(vocab_size=args.vocab, n_positions=1024, n_embd=args.embd, n_layer=args.layers,
                        n_head=args.heads, bos_token_id=last, eos_token_id=last)
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    return folder


def weight_bytes(checkpoint: Path) -> int:
    """Bytes of the stored tensors (from the safetensors header): what one decode step must read at least once."""
    with open(checkpoint / "model.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return sum(t["data_offsets"][1] - t["data_offsets"][0] for name, t in header.items() if name != "__metadata__")


def write_specs(args, checkpoint: Path, engines: list[str], table: dict[str, Engine] = ENGINES) -> dict[str, Path]:
    """One spec file per engine: the same prompts, batches and token count for all, its own artifact folder; an
    engine's options may narrow the batches."""
    work = BENCH / "peers" / checkpoint.name
    rng = np.random.default_rng(args.seed)
    prompts = rng.integers(0, args.vocab, (max(args.batches), args.prompt)).tolist()  # B rows = the first B
    specs = {}
    for name in engines:
        engine = table[name]
        spec = {"checkpoint": str(checkpoint), "artifact": str(work / engine.artifact) if engine.artifact else None,
                "prompts": prompts, "batches": args.batches, "new_tokens": args.new_tokens, "threads": args.threads,
                **engine.options}
        specs[name] = write_spec(work, name, spec)
    return specs


def summarize(name: str, runs: list[dict], verdict: dict) -> dict:
    """Medians over the repeats, per-token quantiles over every repeat's token gaps; peak RSS is the largest seen."""
    batches = {}
    for b in runs[0]["batches"]:
        per = [r["batches"][b] for r in runs]
        batches[b] = {k: statistics.median(p[k] for p in per) for k in ("prefill_ms", "decode_ms_per_token",
                                                                        "tokens_per_s", "warmup_s")}
        gaps = np.concatenate([p["token_gaps_ms"] for p in per])
        batches[b]["token_ms"] = {f"p{q}": float(np.percentile(gaps, q)) for q in (50, 90, 99)}
        batches[b]["token_gaps_ms"] = gaps.round(3).tolist()
        batches[b]["decode_ms_per_token_all"] = [p["decode_ms_per_token"] for p in per]
    return {"engine": name, "repeats": len(runs), "load_s": statistics.median(r["load_s"] for r in runs),
            "process_s": statistics.median(r["wall_s"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "versions": runs[0].get("versions", {}),
            "batches": batches, **verdict}


def agree(outputs: dict, reference: dict) -> dict:
    """`agrees` when every row's greedy ids equal the reference engine's at every batch size; per batch size, the
    tokens that agree before the first difference in the worst row."""
    before_difference = {}
    for b, entry in outputs.items():
        pairs = zip(entry["ids"], reference[b]["ids"], strict=True)
        before_difference[b] = min(next((i for i, (x, y) in enumerate(zip(ids, ref)) if x != y), len(ref))
                                   for ids, ref in pairs)
    return {"agrees": all(entry["ids"] == reference[b]["ids"] for b, entry in outputs.items()),
            "tokens_agreeing_before_first_difference": before_difference}


def markdown(summaries: list[dict], batches: list[int], floor_ms: float) -> str:
    small, large = str(min(batches)), str(max(batches))
    head = (f"| engine | B={small} prefill ms | B={small} decode ms/token | B={small} token p50 / p90 / p99 ms "
            f"| floor share | B={large} decode ms/token | B={large} tokens/s | peak RSS MB | agrees |")
    lines = [head, "|" + " --- |" * 9]
    for s in summaries:
        lo, hi = s["batches"][small], s["batches"].get(large)
        quantiles = " / ".join(f"{v:.2f}" for v in lo["token_ms"].values())
        large_cells = f"{hi['decode_ms_per_token']:.2f} | {hi['tokens_per_s']:.1f}" if hi else "— | —"
        lines.append(f"| {s['engine']} | {lo['prefill_ms']:.1f} | {lo['decode_ms_per_token']:.2f} | {quantiles} "
                     f"| {floor_ms / lo['decode_ms_per_token']:.2f} | {large_cells} "
                     f"| {s['peak_rss_mb']:.0f} | {s['agrees']} |")
    ours = [s for s in summaries if s["engine"] in (REFERENCE, "edgeinfer-int8")]
    peers = [s for s in summaries if not s["engine"].startswith("edgeinfer")]
    if ours and peers:
        lines.append("")
        lines += [f"- {a['engine']} speed ÷ {b['engine']}'s, decode: " + ", ".join(
            f"B={x} {b['batches'][x]['decode_ms_per_token'] / a['batches'][x]['decode_ms_per_token']:.2f}×"
            for x in (small, large) if x in b["batches"]) for a in ours for b in peers]
    return "\n".join(lines)


def peer_arguments(parser: argparse.ArgumentParser, engines: dict[str, Engine], repeats: int) -> None:
    """The options every decode-against-peers script takes: engines, workload, threads, waiting policy."""
    parser.add_argument("--engines", nargs="+", choices=list(engines), default=list(engines))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=128, help="prompt length in tokens")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt ids")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds allowed to one engine process")
    parser.add_argument("--omp-wait", choices=["PASSIVE", "ACTIVE"], default=None,
                        help="OMP_WAIT_POLICY for every engine (default: OpenMP's own; PASSIVE on a shared machine)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and short run, to check the pipeline")
    peer_arguments(parser, ENGINES, repeats=3)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--embd", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--name", default="decode_peers", help="<results>/<name>.json and .md")
    parser.add_argument("--results", type=Path, default=None, help="folder of the results (default results/, "
                        "results/quick with --quick)")
    args = parser.parse_args(argv)
    args.results = args.results or results_folder(args.quick)
    if args.quick:
        args.layers, args.embd, args.heads, args.vocab = 2, 64, 2, 1000
        args.prompt, args.new_tokens, args.batches, args.repeats = 16, 8, [1, 2], 1
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2: decode time is measured after the first token")
    return args


def run_peers(args: argparse.Namespace, checkpoint: Path, table: dict[str, Engine],
              shape: dict) -> tuple[dict, str, str]:
    """The whole measurement on one checkpoint: prepare each engine's artifact, gate, time the engines interleaved,
    take the bandwidth floor; returns (report, markdown table, note)."""
    load_before = machine()
    engines, skipped = available(table, args.engines)
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", flush=True)
    specs = write_specs(args, checkpoint, engines, table)
    env = engine_env(args.threads, args.omp_wait)
    engines = prepare_all(table, engines, specs, env, args.timeout, skipped)
    verdicts = gate_all(table, engines, specs, env, args.timeout, skipped, REFERENCE, agree)

    runs = run_all(table, engines, specs, env, args.repeats, args.timeout, skipped, lambda result: ", ".join(
        f"B={b} {v['decode_ms_per_token']:.2f} ms/token" for b, v in result["batches"].items()))
    summaries = [summarize(n, r, verdicts[n]) for n, r in runs.items() if r]
    bandwidth = copy_bandwidth()
    weights = weight_bytes(checkpoint)
    floor_ms = weights / bandwidth * 1e3
    for s in summaries:
        s["floor_share"] = floor_ms / s["batches"][str(min(args.batches))]["decode_ms_per_token"]

    report = {
        "shape": {**shape, "prompt": args.prompt, "new_tokens": args.new_tokens, "batches": args.batches},
        "checkpoint": str(checkpoint.relative_to(ROOT)), "threads": args.threads, "repeats": args.repeats,
        "omp_wait_policy": args.omp_wait or "default",
        "reference": REFERENCE, "weight_bytes": weights, "copy_bandwidth_gb_s": bandwidth / 1e9,
        "floor_ms_per_token": floor_ms, "machine_before": load_before, "machine_after": machine(),
        "skipped": skipped, "engines": summaries,
    }
    note = (f"weights {weights / 1e6:.0f} MB, copy bandwidth {bandwidth / 1e9:.1f} GB/s (read + write), "
            f"floor {floor_ms:.2f} ms/token; {args.threads} threads, median of {args.repeats} interleaved repeats, "
            f"OMP_WAIT_POLICY {args.omp_wait or 'default'}")
    return report, markdown(summaries, args.batches, floor_ms), note


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    checkpoint = make_checkpoint(args)
    shape = {"layers": args.layers, "embd": args.embd, "heads": args.heads, "vocab": args.vocab}
    report, table, note = run_peers(args, checkpoint, ENGINES, shape)
    write_results(args.results, args.name, report, table, note)
    return report


if __name__ == "__main__":
    main()
