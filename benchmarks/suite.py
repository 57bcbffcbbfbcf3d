"""Every job against the engines a user would pick instead, in one run: what `edgeinfer bench` starts.

    python benchmarks/suite.py [--quick] [--jobs decode qa dgcnn xiangqi dialogue] [--repeats 2]

- decode: decode_peers.py (GPT-2-small shape, prompt 128 -> 128 new tokens, B = 1, 4, 16), then a thread sweep
  (B = 1 at 1..nproc threads) and a prompt-length sweep (B = 1, prompts 32, 128, 512);
- qa: qa_peers.py (BERT-base shape, sequence 384, B = 1, 8, 32) and, where its weights and data exist here, the
  default DGCNN bundle against the same model in PyTorch eager (qa_throughput.py);
- xiangqi: move-selection latency at plies 10, 40 and 80, the one call that scores every legal move against one run
  per legal move of the 4-character model;
- dialogue: a chat turn on the default dialogue bundle (first-token and per-token latency).

Writes results/bench.json, results/bench.md and PNG plots in results/. `--quick` runs tiny models, one repeat and
small sweeps in well under a minute: a check that the whole pipeline works, never a measurement; it writes under
results/quick/, so it never replaces a full run's results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from driver import (
    BENCH,
    ROOT,
    Engine,
    engine_env,
    gate_all,
    machine,
    results_folder,
    run_all,
    write_spec,
)
from tqdm import tqdm

JOBS = ("decode", "qa", "dgcnn", "xiangqi", "dialogue")
# a few fixed turns, so the dialogue job needs no dataset
HISTORIES = [
    ["hi , how are you doing today ?"],
    ["do you have any plans for the weekend ?", "i might go hiking . you ?"],
    ["你好", "你好 , 很高兴认识你"],
    ["what kind of music do you like ?"],
    ["今天天气怎么样 ?"],
    ["i just got back from a trip to japan .", "oh nice , how was it ?", "amazing , the food was great ."],
]


def decode(args) -> dict:
    import decode_peers

    common = ["--repeats", str(args.repeats), *(["--omp-wait", args.omp_wait] if args.omp_wait else [])]
    if args.quick:
        main = decode_peers.main(["--quick", "--engines", *args.decode_engines, "--name", "bench_decode"])
        sweep_engines, threads, prompts, extra = ["edgeinfer-contrib"], [1, os.cpu_count()], [8, 16], ["--quick"]
    else:
        main = decode_peers.main([*common, "--engines", *args.decode_engines, "--batches", "1", "4", "16",
                                  "--new-tokens", "128", "--name", "bench_decode"])
        sweep = ["edgeinfer-contrib", "edgeinfer-int8", "hf-torch", "optimum", "genai", "ct2-fp32"]
        sweep_engines = [e for e in args.decode_engines if e in sweep]
        threads, prompts, extra = range(1, os.cpu_count() + 1), [32, 128, 512], []
    single = ["--batches", "1", "--new-tokens", "8" if args.quick else "32", "--repeats", "1", "--engines",
              *sweep_engines, *extra]
    by_threads = {t: decode_peers.main([*single, "--threads", str(t), "--name", f"bench_decode_threads{t}"])
                  for t in threads}
    by_prompt = {p: decode_peers.main([*single, "--prompt", str(p), "--name", f"bench_decode_prompt{p}"])
                 for p in prompts}
    return {"main": main, "threads": by_threads, "prompts": by_prompt}


def qa(args) -> dict:
    import qa_peers

    argv = ["--quick"] if args.quick else ["--repeats", str(args.repeats)]
    return qa_peers.main([*argv, "--engines", *args.qa_engines, "--name", "bench_qa"])


def dgcnn(args) -> dict:
    """The shipped DGCNN bundle vs its PyTorch weights; needs build/dgcnn and data/qa (train_dgcnn.py, qa_data.py)."""
    weights, data = ROOT / "build" / "dgcnn", ROOT / "data" / "qa" / "dev.jsonl"
    missing = [str(p.relative_to(ROOT)) for p in (weights, data) if not p.exists()]
    if missing:
        return {"skipped": f"missing {', '.join(missing)}: run export/qa_data.py and export/train_dgcnn.py"}
    import qa_throughput

    from edgeinfer.loader import default_bundle

    sizes = (1, 8) if args.quick else (1, 8, 32, 128)
    table = qa_throughput.measure(str(default_bundle("qa-dgcnn")), weights, data, 32 if args.quick else 512, 1, sizes)
    return {"threads": 1, "table": table}


def xiangqi(args) -> dict:
    """Move latency on plies of one engine-made game (ships in tests/data, so no dataset is needed)."""
    import xiangqi_moves

    import edgeinfer
    from edgeinfer.loader import default_bundle
    from edgeinfer.xiangqi.mover import MoveModel

    game = (ROOT / "tests" / "data" / "xiangqi_game.txt").read_text().split()
    plies = [10] if args.quick else [10, 40, 80]
    model = edgeinfer.load(default_bundle("xiangqi"), device="cpu")
    mover = MoveModel(model)
    # a square-pair bundle is timed against the 4-character bundle's one run per legal move
    rerun = MoveModel(edgeinfer.load(default_bundle("xiangqi-chars"), device="cpu")) if mover.square_pairs else None
    return {"bundle": str(model.folder.name), "latency": xiangqi_moves.latency(mover, [game], plies,
                                                                               3 if args.quick else 15, rerun_mover=rerun)}


def dialogue(args) -> dict:
    """A greedy turn (32 tokens) against the same weights in PyTorch eager, then sampled turns (the chat defaults)."""
    import chat_quality
    import decode_peers

    import edgeinfer
    from edgeinfer.chat.format import encode_dialogue, reply_segment_id
    from edgeinfer.loader import default_bundle

    bundle = default_bundle("chat")
    model = edgeinfer.load(bundle, device="cpu")
    ids, segments = encode_dialogue(model.tokenizer, HISTORIES[-1], model.max_positions - 40)
    engines, skipped = {"edgeinfer": Engine("engine_chat.py", False)}, {}
    if args.chat_checkpoint.is_file():
        engines["torch-eager"] = Engine("engine_chat.py", False)
    else:
        skipped["torch-eager"] = f"no training checkpoint at {args.chat_checkpoint} (export/train_chat.py writes it)"
    specs = {name: write_spec(BENCH / "peers" / "chat", name, {
        "engine": name, "artifact": str(bundle), "checkpoint": str(args.chat_checkpoint), "prompts": [ids],
        "segments": [segments], "reply_segment": reply_segment_id(segments), "batches": [1],
        "new_tokens": 8 if args.quick else 32, "threads": 2}) for name in engines}
    env = engine_env(2, args.omp_wait)
    # the gate: the same greedy reply as edgeinfer's
    verdicts = gate_all(engines, list(engines), specs, env, 600, skipped, "edgeinfer", decode_peers.agree)
    runs = run_all(engines, list(engines), specs, env, 1 if args.quick else args.repeats, 600, skipped,
                   lambda result: f"{result['batches']['1']['decode_ms_per_token']:.2f} ms/token")
    turn = [decode_peers.summarize(name, r, verdicts[name]) for name, r in runs.items() if r]
    sampled = chat_quality.measure(model, HISTORIES[:2] if args.quick else HISTORIES * 3, seed=0)
    return {"history_tokens": len(ids), "turn": turn, "skipped": skipped, "sampled": sampled}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, one repeat: checks the pipeline (< 1 min)")
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--update", action="store_true",
                        help="keep the other jobs of the last results/bench.json and replace only these")
    parser.add_argument("--omp-wait", choices=["PASSIVE", "ACTIVE"], default=None,
                        help="OMP_WAIT_POLICY for the OpenMP peers (default: OpenMP's own)")
    parser.add_argument("--decode-engines", nargs="+", default=None, help="default: every decode_peers engine")
    parser.add_argument("--qa-engines", nargs="+", default=None, help="default: every qa_peers engine")
    parser.add_argument("--chat-checkpoint", type=Path, default=ROOT / "build" / "chat-tf" / "model.pt",
                        help="training checkpoint of the default chat bundle, for the PyTorch eager row")
    args = parser.parse_args(argv)
    args.chat_checkpoint = args.chat_checkpoint.resolve()  # engines run from the repository root
    import decode_peers
    import qa_peers

    quick_decode = ["edgeinfer-contrib", "edgeinfer-unfused", "hf-torch"]
    args.decode_engines = args.decode_engines or (quick_decode if args.quick else list(decode_peers.ENGINES))
    args.qa_engines = args.qa_engines or (["edgeinfer"] if args.quick else list(qa_peers.ENGINES))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from plots import write_plots, write_tables

    started = time.perf_counter()
    command = " ".join(["edgeinfer bench", *(argv if argv is not None else sys.argv[1:])])
    report: dict = {"command": command, "quick": args.quick, "machine_before": machine(), "jobs": {}}
    out = results_folder(args.quick)
    if args.update and (out / "bench.json").is_file():
        kept = json.loads((out / "bench.json").read_text())
        report["jobs"] = kept["jobs"]
        report["command"] = f"{kept['command']}, then {command}"
    for job in tqdm(args.jobs, desc="bench", unit="job"):
        tqdm.write(f"== {job}")
        report["jobs"][job] = globals()[job](args)
    report["machine_after"] = machine()
    report["seconds"] = round(time.perf_counter() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    report["plots"] = [str(p.relative_to(ROOT)) for p in write_plots(report, out)]
    (out / "bench.md").write_text(write_tables(report))
    (out / "bench.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    folder = out.relative_to(ROOT)
    print(f"wrote {folder}/bench.json, {folder}/bench.md and {len(report['plots'])} plots in {report['seconds']} s")
    return report


if __name__ == "__main__":
    main()
