"""`edgeinfer bench`: every job against the engines users would pick instead (benchmarks/suite.py).

The suite lives in the source checkout's benchmarks/ folder (it drives peer engines in their own processes and
virtual environments), so this command needs an editable install: `pip install -e '.[cpu,export,bench]'`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from ..errors import InputError
from .common import at_least

HELP = ("benchmark every job against peer engines; writes results/bench.{json,md} and plots (results/quick/ with "
        "--quick; source checkout)")
SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "suite.py"
JOBS = ("decode", "qa", "dgcnn", "xiangqi", "dialogue")
# what the suite imports, by the extra that installs it (it exports its models with torch)
EXTRAS = {"bench": ("matplotlib", "tqdm"), "export": ("torch", "onnx", "transformers")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="tiny models, one repeat, small sweeps: checks the pipeline in well under a minute")
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=None, help="default: all of them")
    parser.add_argument("--repeats", type=at_least(1), default=None,
                        help="interleaved repeats per engine (default 2)")
    parser.add_argument("--update", action="store_true",
                        help="replace only these jobs in the last results/bench.json, keeping the others")
    parser.add_argument("--omp-wait", choices=["PASSIVE", "ACTIVE"], default=None,
                        help="OMP_WAIT_POLICY for the OpenMP peers; PASSIVE on a machine shared with other jobs")


def check_extras() -> None:
    """Fail now, naming the extra, rather than after the suite's first jobs: the plots come last."""
    for extra, modules in EXTRAS.items():
        missing = next((name for name in modules if importlib.util.find_spec(name) is None), None)
        if missing is not None:
            raise InputError(f"edgeinfer bench needs edgeinfer[{extra}] ({missing} is missing): "
                             f"pip install -e '.[{extra}]' in the source checkout")


def run(args: argparse.Namespace) -> tuple[dict, str]:
    if not SUITE.is_file():
        raise InputError(f"edgeinfer bench runs from a source checkout (pip install -e '.[cpu,export,bench]'): "
                         f"{SUITE} is missing")
    check_extras()
    argv = ["--quick"] if args.quick else []
    argv += ["--jobs", *args.jobs] if args.jobs else []
    argv += ["--repeats", str(args.repeats)] if args.repeats else []
    argv += ["--omp-wait", args.omp_wait] if args.omp_wait else []
    argv += ["--update"] if args.update else []
    # its own process: the suite imports torch for exports, and its scripts import each other from benchmarks/
    done = subprocess.run([sys.executable, str(SUITE), *argv], cwd=SUITE.parent.parent, check=False,
                          stdout=sys.stderr if args.json else None)
    if done.returncode != 0:
        raise InputError(f"the benchmark suite failed (exit {done.returncode}); its output above says where")
    results = SUITE.parent.parent / "results" / ("quick" if args.quick else "")
    report = json.loads((results / "bench.json").read_text())
    return report, (results / "bench.md").read_text()
