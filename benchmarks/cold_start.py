"""Cold start: a fresh process to its first result, for the GPT-2-small bundle (first generated token) against
CTranslate2 on the same checkpoint, and for extractive QA on the shipped readers (the `edgeinfer qa` command and the
Python API; the default BERT reader and the DGCNN one).

    python benchmarks/cold_start.py [--repeats 5] [--cases ...]

Every sample is a new interpreter; its time runs from just before the parent starts it to the moment the child has
its first token or answer, so interpreter start-up and imports count. The process's CPU time (user + system, to its
exit) is reported too: on a shared machine it moves far less with the load than the wall time does. The child also reports its phases (import,
load, first call). Cases run interleaved, once untimed first (which fills the local cache of the cached
cases and the page cache of all of them), and the medians are reported. The GPT-2-small artifacts are the ones
`benchmarks/decode_peers.py` prepares under build/bench/peers/hf-gpt2-small/ (run it first); CTranslate2 runs in
build/bench/venv-peers. Writes results/cold_start.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from driver import BENCH, ROOT, VENV_PYTHON, machine, write_results

ARTIFACTS = BENCH / "peers" / "hf-gpt2-small"
BUNDLES = ROOT / "runtime" / "bundles"
QA_QUESTION = "「画蛇添足」出自哪部典籍"
QA_CONTEXT = "画蛇添足，出自《战国策·齐策二》，比喻做了多余的事，反而不恰当。"
PROMPT = list(range(100, 116))

CLOCK = "import os, time\nSTART = float(os.environ['COLD_START'])\nmark = lambda: round(time.time() - START, 4)\n"
EDGEINFER_GPT2 = CLOCK + """t = {"started": mark()}
import edgeinfer
t["imported"] = mark()
model = edgeinfer.load(BUNDLE, device="cpu")
t["loaded"] = mark()
model.generate([PROMPT], max_new_tokens=1, do_sample=False)
t["first"] = mark()
print(json.dumps(t))
"""
CT2_GPT2 = CLOCK + """t = {"started": mark()}
import ctranslate2
t["imported"] = mark()
generator = ctranslate2.Generator(BUNDLE, device="cpu", compute_type=QUANT, inter_threads=1, intra_threads=2)
t["loaded"] = mark()
generator.generate_batch([[f"t{i}" for i in PROMPT]], max_length=1, sampling_topk=1, include_prompt_in_result=False)
t["first"] = mark()
print(json.dumps(t))
"""
EDGEINFER_QA = CLOCK + """t = {"started": mark()}
import edgeinfer
t["imported"] = mark()
reader = edgeinfer.load(edgeinfer.loader.default_bundle(READER))
t["loaded"] = mark()
reader.answer([QUESTION], context=[CONTEXT])
t["first"] = mark()
print(json.dumps(t))
"""


def cases(cache_dir: Path) -> dict[str, tuple[list[str], dict]]:
    """name -> (argv, extra environment) of every case whose artifact is present."""
    header = f"import json\nPROMPT = {PROMPT}\nQUESTION = {QA_QUESTION!r}\nCONTEXT = {QA_CONTEXT!r}\n"
    found = {}
    for weights, folder in (("fp32", "edgeinfer-contrib"), ("int8", "edgeinfer-contrib-int8"),
                            ("int4", "edgeinfer-contrib-int4")):
        bundle = ARTIFACTS / folder
        if not (bundle / "manifest.json").exists():
            continue
        argv = [sys.executable, "-c", header + f"BUNDLE = {str(bundle)!r}\n" + EDGEINFER_GPT2]
        cached = {"EDGEINFER_CACHE_DIR": str(cache_dir)}
        # the local cache (runtime/local_cache.py): optimized graphs, verified digests, passed probes
        found[f"gpt2 edgeinfer {weights}, local cache off"] = (argv, {"EDGEINFER_GRAPH_CACHE": "0"})
        found[f"gpt2 edgeinfer {weights}, local cache"] = (argv, cached)
        found[f"gpt2 edgeinfer {weights}, local cache, no digest check"] = (argv, {**cached, "EDGEINFER_VERIFY": "0"})
    for quant in ("float32", "int8"):
        artifact = ARTIFACTS / f"ct2-{quant}"
        if artifact.exists() and VENV_PYTHON.exists():
            script = header + f"BUNDLE = {str(artifact)!r}\nQUANT = {quant!r}\n" + CT2_GPT2
            found[f"gpt2 ctranslate2 {quant}"] = ([str(VENV_PYTHON), "-c", script], {})
    for reader in ("qa", "qa-dgcnn"):
        found[f"{reader} python API"] = ([sys.executable, "-c", header + f"READER = {reader!r}\n" + EDGEINFER_QA], {})
        found[f"{reader} `edgeinfer qa`"] = ([sys.executable, "-m", "edgeinfer", "qa", "--bundle", str(BUNDLES / reader),
                                             "--question", QA_QUESTION, "--context", QA_CONTEXT, "--json"], {})
    return found


def sample(argv: list[str], extra: dict, threads: int) -> dict:
    """One fresh process: its phases (seconds since the parent started it), or the end of the process for the CLI."""
    env = {**os.environ, **extra, "EDGEINFER_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.run(argv, env={**env, "COLD_START": repr(start)}, capture_output=True, text=True, check=False,
                          cwd=ROOT)
    ended = round(time.time() - start, 4)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 4)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]}
    last = proc.stdout.strip().splitlines()[-1]
    phases = json.loads(last) if last.startswith("{\"started\"") else {}
    return {**phases, "first": phases.get("first", ended), "exited": ended, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", nargs="+", default=None, help="names of the cases to run (default: all found)")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgeinfer-graphs-") as cache_dir:
        table = cases(Path(cache_dir))
        chosen = {n: c for n, c in table.items() if args.cases is None or n in args.cases}
        before = machine()
        errors = {}
        for name, (argv, extra) in chosen.items():  # untimed: fills the local cache and the page cache
            warm = sample(argv, extra, args.threads)
            if "error" in warm:
                errors[name] = warm["error"]
                print(f"{name}: {warm['error']}", flush=True)
        runs = {name: [] for name in chosen if name not in errors}
        for repeat in range(args.repeats):
            for name, samples in runs.items():
                samples.append(sample(*chosen[name], args.threads))
                print(f"repeat {repeat + 1}/{args.repeats} {name}: {samples[-1]}", flush=True)
    summary = {}
    for name, samples in runs.items():
        good = [s for s in samples if "error" not in s]
        summary[name] = {key: statistics.median(s[key] for s in good)
                         for key in ("started", "imported", "loaded", "first", "cpu") if good and key in good[0]}
    rows = [f"| {name} | {s.get('started', float('nan')):.2f} | {s.get('imported', float('nan')):.2f} | "
            f"{s.get('loaded', float('nan')):.2f} | {s['first']:.2f} | {s['cpu']:.2f} |"
            for name, s in summary.items() if "first" in s]
    table_md = "\n".join(["| case | interpreter up s | imported s | loaded s | first token / answer s | process CPU s |",
                          "|---|---|---|---|---|---|", *rows])
    note = (f"seconds from process start, medians of {args.repeats} interleaved fresh processes after one untimed "
            f"each; {args.threads} threads; load average before {before['loadavg']}, after {machine()['loadavg']}")
    report = {"repeats": args.repeats, "threads": args.threads, "machine_before": before, "machine_after": machine(),
              "cases": summary, "samples": runs, "skipped": errors}
    write_results(args.results, "cold_start", report, table_md, note)


if __name__ == "__main__":
    main()
