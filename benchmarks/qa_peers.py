"""Extractive QA of edgeinfer against the engines users would pick instead: same weights, text in, one process per run.

    python benchmarks/qa_peers.py [--quick] [--engines ...] [--batches 1 8 32] [--repeats 3]

Makes a random-weight BertForQuestionAnswering of BERT-base shape with the BERT-Chinese vocabulary (21,128 tokens,
export/assets/) once under build/bench/, and seeded texts that tokenize to exactly one 384-token window (a 16-character
question, a 365-character context, 3 special tokens), so every engine does the same work. Each engine answers the
same questions in batches of B. Before any timing, each engine runs once untimed as the correctness gate: a row
agrees when its best span's character offsets equal edgeinfer fp32's.
Writes results/qa_peers.json and .md. HF pipeline and Optimum run in build/bench/venv-peers.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from driver import (
    BENCH,
    ROOT,
    Engine,
    available,
    engine_env,
    gate_all,
    machine,
    prepare_all,
    results_folder,
    run_all,
    write_results,
    write_spec,
)

REFERENCE = "edgeinfer"
VOCAB = ROOT / "export" / "assets" / "bert_chinese_vocab.txt"
ENGINES = {
    "edgeinfer": Engine("qa_engines.py", False, "edgeinfer", {"engine": "edgeinfer"}),
    # random weights give small logits next to int8 error: the span gate judges the int8 reader
    "edgeinfer-int8": Engine("qa_engines.py", False, "edgeinfer-int8",
                             {"engine": "edgeinfer", "quantize": "int8", "tolerance": 0.5}),
    "hf-pipeline": Engine("qa_engines.py", True, None, {"engine": "hf-pipeline"}),
    "optimum": Engine("qa_engines.py", True, "optimum", {"engine": "optimum"}),
}


def make_checkpoint(layers: int, hidden: int, heads: int, positions: int) -> Path:
    """A random BertForQuestionAnswering (seed 0) and its WordPiece tokenizer, saved once with save_pretrained."""
    folder = BENCH / f"hf-bert-qa-{layers}x{hidden}x{heads}"
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    print(f"creating checkpoint {folder.relative_to(ROOT)}", flush=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=21128, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=positions)
    BertForQuestionAnswering(config).eval().save_pretrained(folder)
    BertTokenizerFast(vocab_file=str(VOCAB)).save_pretrained(folder)
    return folder


def make_texts(n: int, question_len: int, context_len: int, seed: int) -> list[dict[str, str]]:
    """Seeded questions and contexts of single-token CJK characters drawn from the vocabulary."""
    chars = [t for t in VOCAB.read_text(encoding="utf-8").split("\n") if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]
    rng = np.random.default_rng(seed)
    draw = lambda k: "".join(chars[i] for i in rng.integers(0, len(chars), k))
    return [{"question": draw(question_len), "context": draw(context_len)} for _ in range(n)]


def summarize(name: str, runs: list[dict], verdict: dict) -> dict:
    """Medians over the repeats (items/s, latency quantiles) and every timed call."""
    batches = {}
    for b in runs[0]["batches"]:
        per = [r["batches"][b] for r in runs]
        batches[b] = {"items_per_s": statistics.median(p["items_per_s"] for p in per),
                      "latency_ms": {q: statistics.median(p["latency_ms"][q] for p in per) for q in per[0]["latency_ms"]},
                      "calls_ms": [t for p in per for t in p["calls_ms"]]}
    return {"engine": name, "repeats": len(runs), "load_s": statistics.median(r["load_s"] for r in runs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "versions": runs[0]["versions"], "batches": batches,
            **verdict}


def agree(outputs: dict, reference: dict) -> dict:
    """`agrees`: the share of rows whose best span equals edgeinfer fp32's, over every batch size."""
    pairs = [(x, y) for b, entry in outputs.items() for x, y in zip(entry["spans"], reference[b]["spans"], strict=True)]
    return {"agrees": sum(list(x) == list(y) for x, y in pairs) / len(pairs)}


def markdown(summaries: list[dict], batches: list[int]) -> str:
    head = "| engine | " + " | ".join(f"B={b} seq/s" for b in batches) + f" | B={batches[-1]} p50 / p90 ms"
    head += " | load s | peak RSS MB | spans agree |"
    lines = [head, "|" + " --- |" * (len(batches) + 5)]
    for s in summaries:
        rates = " | ".join(f"{s['batches'][str(b)]['items_per_s']:.2f}" for b in batches)
        lat = s["batches"][str(batches[-1])]["latency_ms"]
        agrees = "—" if s["agrees"] is None else f"{s['agrees']:.0%}"
        lines.append(f"| {s['engine']} | {rates} | {lat['p50']:.0f} / {lat['p90']:.0f} | {s['load_s']:.1f} "
                     f"| {s['peak_rss_mb']:.0f} | {agrees} |")
    ours = [s for s in summaries if s["engine"].startswith("edgeinfer")]
    peers = [s for s in summaries if s not in ours]
    big = str(batches[-1])
    if ours and peers:
        lines.append("")
        lines += [f"- {a['engine']} ÷ {b['engine']} at B={big}: "
                  f"{a['batches'][big]['items_per_s'] / b['batches'][big]['items_per_s']:.2f}×" for a in ours for b in peers]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and short texts, to check the pipeline")
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--omp-wait", choices=["PASSIVE", "ACTIVE"], default=None,
                        help="OMP_WAIT_POLICY for every engine (default: OpenMP's own)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to one engine process")
    parser.add_argument("--name", default="qa_peers", help="<results>/<name>.json and .md")
    parser.add_argument("--results", type=Path, default=None, help="folder of the results (default results/, "
                        "results/quick with --quick)")
    args = parser.parse_args(argv)
    args.results = args.results or results_folder(args.quick)
    args.shape, args.window, args.question = (12, 768, 12), 384, 16
    if args.quick:
        args.shape, args.window, args.question = (2, 64, 2), 64, 8
        args.batches, args.repeats = [1, 2], 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    before = machine()
    checkpoint = make_checkpoint(*args.shape, positions=512)
    texts = make_texts(max(args.batches), args.question, args.window - args.question - 3, seed=0)
    engines, skipped = available(ENGINES, args.engines)
    work = BENCH / "peers" / checkpoint.name
    specs = {}
    for name in engines:
        engine = ENGINES[name]
        specs[name] = write_spec(work, name, {
            "checkpoint": str(checkpoint), "artifact": str(work / engine.artifact) if engine.artifact else None,
            "texts": texts, "batches": args.batches, "threads": args.threads, "window": args.window,
            "stride": 128 if args.window > 128 else args.window // 4, "max_answer_len": 30, **engine.options})
    env = engine_env(args.threads, args.omp_wait)
    engines = prepare_all(ENGINES, engines, specs, env, args.timeout, skipped)
    verdicts = gate_all(ENGINES, engines, specs, env, args.timeout, skipped, REFERENCE, agree)

    runs = run_all(ENGINES, engines, specs, env, args.repeats, args.timeout, skipped, lambda result: ", ".join(
        f"B={b} {v['items_per_s']:.2f} seq/s" for b, v in result["batches"].items()))
    summaries = [summarize(n, r, verdicts[n]) for n, r in runs.items() if r]
    table = markdown(summaries, args.batches)
    report = {"shape": {"layers": args.shape[0], "hidden": args.shape[1], "heads": args.shape[2], "vocab": 21128,
                        "sequence": args.window, "batches": args.batches},
              "checkpoint": str(checkpoint.relative_to(ROOT)), "threads": args.threads, "repeats": args.repeats,
              "omp_wait_policy": args.omp_wait or "default", "reference": REFERENCE, "machine_before": before,
              "machine_after": machine(), "skipped": skipped, "engines": summaries}
    note = (f"sequence {args.window} (one window per question), text in, {args.threads} threads, median of "
            f"{args.repeats} interleaved repeats")
    write_results(args.results, args.name, report, table, note)
    return report


if __name__ == "__main__":
    main()
