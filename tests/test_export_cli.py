"""`edgeinfer export` as a user meets it: in a fresh process, stderr holds one line per step with its seconds and
nothing that torch's exporter or transformers print on their own; stdout holds the result."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_gpt2
from test_llama_export import tiny_llama

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
STEP = re.compile(r"^(?P<label>[a-z0-9 ]+) \.\.\. \d+\.\d\d s$")
STEPS = ["import torch and transformers", "load checkpoint", "trace and export", "fuse", "save graph", "parity check", "write bundle"]


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_export_reports_each_step_and_no_library_chatter(tmp_path, make):
    make().save_pretrained(tmp_path / "checkpoint")
    done = subprocess.run([sys.executable, "-P", "-m", "edgeinfer", "export", "--from-hf", tmp_path / "checkpoint",
                           "--out", tmp_path / "bundle", "--json"], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["bundle"] == str(tmp_path / "bundle")
    lines = done.stderr.splitlines()
    assert not [line for line in lines if "Warning" in line or re.match(r"^[WE]\d{4} ", line)], done.stderr
    assert [STEP.match(line)["label"] for line in lines if STEP.match(line)] == STEPS, done.stderr
    assert len(lines) == len(STEPS), done.stderr
