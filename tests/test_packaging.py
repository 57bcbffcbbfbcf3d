"""Packaging claims, checked without a GPU.

onnxruntime and onnxruntime-gpu both install the `onnxruntime/` folder: with both installed, whichever pip wrote
last wins, and when that is the CPU build CUDA is gone. So the [gpu] extra must resolve onnxruntime-gpu alone and
[cpu] onnxruntime alone (pip's dry run resolves into an empty environment and installs nothing), and the build
that is installed here must offer the providers its distribution promises.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# what pip prints when it cannot reach a package index
UNREACHABLE = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
               "Network is unreachable", "ConnectTimeout", "Read timed out", "ProxyError")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(extras: str, tmp_path: Path) -> set[str]:
    """The distributions `pip install '.[extras]'` would install into an empty environment."""
    report = tmp_path / f"{extras}.json"
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--retries", "1",
               "--timeout", "30", "--report", str(report), f".[{extras}]"]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("pip did not resolve within 600 s: no package index reachable?")
    output = done.stdout + done.stderr
    if done.returncode != 0 and any(marker in output for marker in UNREACHABLE):
        pytest.skip(f"no package index reachable: {output.strip().splitlines()[-1]}")
    assert done.returncode == 0, output[-3000:]
    return {_name(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}


def test_gpu_extra_installs_onnxruntime_gpu_and_not_the_cpu_build(tmp_path):
    names = resolve("gpu", tmp_path)
    assert "onnxruntime-gpu" in names
    assert "onnxruntime" not in names


def test_cpu_extra_installs_the_cpu_build(tmp_path):
    names = resolve("cpu", tmp_path)
    assert "onnxruntime" in names
    assert "onnxruntime-gpu" not in names


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_installed_onnxruntime_offers_its_distributions_providers():
    ort = pytest.importorskip("onnxruntime")
    builds = [name for name in ("onnxruntime", "onnxruntime-gpu") if _installed(name)]
    assert len(builds) == 1, (f"installed: {builds or 'neither'}; both write onnxruntime/, so one overwrote the "
                              "other: uninstall both, then pip install edgeinfer[cpu] or edgeinfer[gpu]")
    providers = ort.get_available_providers()
    assert "CPUExecutionProvider" in providers
    if builds == ["onnxruntime-gpu"]:  # a build's compiled-in providers: listed with or without a GPU present
        assert "CUDAExecutionProvider" in providers
