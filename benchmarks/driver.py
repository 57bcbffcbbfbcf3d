"""What the peer benchmarks share: engine processes, their environment, the machine's state and its copy bandwidth.

Every engine runs as `python benchmarks/peers/<script> prepare|run SPEC.json` in a fresh process (under
build/bench/venv-peers for engines that need older transformers), prints one JSON line, and is started once per
repeat in rotating order, so engines of one repeat see the same machine noise.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "benchmarks" / "peers"
BENCH = ROOT / "build" / "bench"
VENV_PYTHON = BENCH / "venv-peers" / "bin" / "python"
RESULTS = ROOT / "results"  # full runs; --quick runs write under results/quick, so they never replace a measurement


@dataclass
class Engine:
    script: str
    in_venv: bool  # runs under build/bench/venv-peers instead of this interpreter
    artifact: str | None = None  # folder name of its converted model under the work folder; None: reads the checkpoint
    options: dict = field(default_factory=dict)
    python: Path | None = None  # an interpreter of its own (llama-cpp-python's prebuilt venv), over in_venv


def copy_bandwidth(mb: int = 512, tries: int = 5) -> float:
    """Best-of-`tries` bytes/s of a numpy array copy, counting the bytes read and the bytes written."""
    src = np.ones(mb * 2**20 // 8)
    dst = np.ones_like(src)  # touched, so the first copy does not pay for page faults
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def engine_env(threads: int, omp_wait: str | None) -> dict:
    """Every engine gets the same thread count, whichever knob its runtime reads, and never touches the network.

    `omp_wait` (None: OpenMP's default, spin-waiting) sets OMP_WAIT_POLICY for the OpenMP engines (PyTorch,
    CTranslate2). PASSIVE keeps them sane when another job holds a core (with spinning they ran up to 10x slower per
    token, erratically, on a loaded machine) but costs them latency on an idle one. onnxruntime has its own thread
    pool and ignores the variable.
    """
    env = dict(os.environ)
    env.update({"EDGEINFER_THREADS": str(threads), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"})
    if omp_wait:
        env["OMP_WAIT_POLICY"] = omp_wait
    return env


def available(engines: dict[str, Engine], names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Engines that can run here, and the reason for each one that cannot."""
    skipped = {n: f"{VENV_PYTHON.relative_to(ROOT)} is missing: run benchmarks/peers/setup_venv.sh"
               for n in names if engines[n].in_venv and not VENV_PYTHON.exists()}
    skipped |= {n: f"{engines[n].python} is missing" for n in names
                if engines[n].python is not None and not engines[n].python.exists()}
    return [n for n in names if n not in skipped], skipped


def run_engine(engine: Engine, mode: str, spec: Path, env: dict, timeout: float) -> tuple[dict | None, str]:
    """(parsed JSON line or None, error text) of one engine process."""
    python = str(engine.python or (VENV_PYTHON if engine.in_venv else sys.executable))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([python, str(PEERS / engine.script), mode, str(spec)], check=False, capture_output=True,
                              text=True, timeout=timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    if proc.stdout.strip() and mode == "prepare":
        print(proc.stdout.rstrip(), flush=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
        return None, f"exit {proc.returncode}: {tail}"
    if mode == "prepare":
        return {"wall_s": wall}, ""
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result, ""


def prepare_all(engines: dict[str, Engine], names: list[str], specs: dict[str, Path], env: dict, timeout: float,
                skipped: dict[str, str]) -> list[str]:
    """Run each engine's `prepare` (exports, conversions; cached by the scripts); returns those that succeeded."""
    ready = []
    for name in names:
        print(f"preparing {name}", flush=True)
        done, error = run_engine(engines[name], "prepare", specs[name], env, timeout)
        if done is None:
            print(f"  {name} cannot be prepared, skipped: {error}", flush=True)
            skipped[name] = f"prepare failed: {error}"
        else:
            ready.append(name)
    return ready


def interleaved_runs(engines: dict[str, Engine], names: list[str], specs: dict[str, Path], env: dict, repeats: int,
                     timeout: float, skipped: dict[str, str]) -> Iterator[tuple[int, str, dict]]:
    """Yield (repeat, engine, result) for every run; each repeat starts every engine once, rotating who goes first.

    An engine that fails is reported in `skipped` and dropped from later repeats.
    """
    for repeat in range(repeats):
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for name in order:
            if name in skipped:
                continue
            result, error = run_engine(engines[name], "run", specs[name], env, timeout)
            if result is None:
                print(f"  {name} failed, dropped from later repeats: {error}", flush=True)
                skipped[name] = f"run failed: {error}"
                continue
            yield repeat, name, result


def run_all(engines: dict[str, Engine], names: list[str], specs: dict[str, Path], env: dict, repeats: int,
            timeout: float, skipped: dict[str, str], describe) -> dict[str, list[dict]]:
    """Each engine's results over the interleaved repeats, printing `describe(result)` after every run."""
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for repeat, name, result in interleaved_runs(engines, names, specs, env, repeats, timeout, skipped):
        runs[name].append(result)
        print(f"repeat {repeat + 1}/{repeats} {name}: load {result['load_s']:.1f} s, {describe(result)}", flush=True)
    return runs


def gate_all(engines: dict[str, Engine], names: list[str], specs: dict[str, Path], env: dict, timeout: float,
             skipped: dict[str, str], reference: str, agree) -> dict[str, dict]:
    """The correctness gate, run before any timing: each engine once, untimed, on its spec plus `"gate": true`.

    Returns each engine's verdict, `agree(its outputs, the reference's outputs)`: a dict with at least `agrees`
    (None when the reference did not run). A disagreeing engine is still timed and its row marked; one that fails
    here is reported in `skipped`.
    """
    outputs = {}
    for name in names:
        gate_spec = specs[name].with_name(f"{specs[name].stem}-gate.json")
        gate_spec.write_text(json.dumps({**json.loads(specs[name].read_text()), "gate": True}))
        result, error = run_engine(engines[name], "run", gate_spec, env, timeout)
        if result is None:
            print(f"  {name} failed the gate run, skipped: {error}", flush=True)
            skipped[name] = f"gate run failed: {error}"
            continue
        outputs[name] = result["batches"]
    verdicts = {}
    for name, out in outputs.items():
        verdicts[name] = agree(out, outputs[reference]) if reference in outputs else {"agrees": None}
        print(f"gate {name}: agrees with {reference}: {verdicts[name]['agrees']}", flush=True)
    return verdicts


def results_folder(quick: bool) -> Path:
    return RESULTS / "quick" if quick else RESULTS


def write_results(out: Path, stem: str, report: dict, table: str, note: str) -> None:
    """<out>/<stem>.json (everything) and .md (the table and its note), then the table and what did not run."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(f"{table}\n\n{note}\n")
    print(f"\n{table}\n\n{note}")
    for name, reason in report["skipped"].items():
        print(f"not run: {name}: {reason}")


def machine() -> dict:
    """What the numbers depend on: processor, cores, load, library versions of this interpreter."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "loadavg": os.getloadavg(),
            "uptime": subprocess.run(["uptime"], check=True, capture_output=True, text=True).stdout.strip()}


def write_spec(work: Path, name: str, spec: dict) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"spec-{name}.json"
    path.write_text(json.dumps(spec))
    return path
