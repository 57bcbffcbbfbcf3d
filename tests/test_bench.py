"""`edgeinfer bench --quick`: the whole suite runs on tiny models and writes its report, tables and plots.

Only that it works is checked here; speed is never asserted by a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_writes_report_tables_and_plots():
    done = subprocess.run([sys.executable, "-m", "edgeinfer", "bench", "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    jobs = report["jobs"]
    assert set(jobs) == {"decode", "qa", "dgcnn", "xiangqi", "dialogue"}
    decode = {s["engine"]: s for s in jobs["decode"]["main"]["engines"]}
    # the correctness gate: same greedy tokens from the fused, unfused and PyTorch engines
    assert {"edgeinfer-contrib", "edgeinfer-unfused", "hf-torch"} <= set(decode)
    assert all(s["agrees"] for s in decode.values())
    assert set(jobs["decode"]["threads"]) == {"1", str(os.cpu_count())}
    assert jobs["qa"]["engines"][0]["agrees"] == 1.0
    assert jobs["xiangqi"]["latency"]["10"]["legal_moves"] > 0
    assert jobs["dialogue"]["sampled"]["contexts"] == 2 and jobs["dialogue"]["sampled"]["first_token_ms_median"] > 0
    assert jobs["dialogue"]["turn"][0]["engine"] == "edgeinfer"
    for plot in report["plots"]:
        assert (ROOT / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(report["plots"]) == 3
    table = (ROOT / "results" / "quick" / "bench.md").read_text()
    assert "### Decode" in table and "edgeinfer-unfused" in table and "### Xiangqi" in table


def test_decode_profile_streams_the_bundles_weights(gpt2_bundles):
    """The profile's MatMul-only graph holds every weight matrix the step multiplies by, the tied LM head too."""
    done = subprocess.run([sys.executable, "benchmarks/decode_profile.py", "--bundle", str(gpt2_bundles["contrib"]),
                           "--prompt", "8", "--steps", "4", "--repeats", "1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    # tiny GPT-2: 2 layers of 48x144 + 48x48 + 48x192 + 192x48, and the 48x97 LM head, in float32
    assert f"({4 * (2 * (48 * 144 + 48 * 48 + 48 * 192 + 192 * 48) + 48 * 97) / 1e6:.2f} MB at" in done.stdout
    assert "MatMul " in done.stdout and "GroupQueryAttention" in done.stdout
