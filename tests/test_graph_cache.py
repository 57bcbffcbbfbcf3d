"""The optimized-graph cache (edgeinfer.session.GraphCache): a second load opens the stored graph and computes the
same logits bit for bit; a damaged entry is replaced; EDGEINFER_GRAPH_CACHE=0 turns it off."""

from __future__ import annotations

import numpy as np
import pytest

import edgeinfer
from edgeinfer import session

pytest.importorskip("torch")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(session, "CACHE_MIN_BYTES", 0)  # the tiny test graphs would not be cached otherwise
    monkeypatch.setenv("EDGEINFER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "graphs"


def _entries(cache):
    return sorted(p for p in cache.iterdir() if not p.name.startswith(".tmp-")) if cache.exists() else []


def _logits(bundle):
    ids = np.random.default_rng(0).integers(0, 97, size=(2, 9))
    return edgeinfer.load(bundle, device="cpu").logits(ids)


@pytest.mark.parametrize("target", ["standard", "contrib"])
def test_second_load_reads_the_cache_and_agrees(cache, gpt2_bundles, monkeypatch, target):
    monkeypatch.setenv("EDGEINFER_GRAPH_CACHE", "0")
    plain = _logits(gpt2_bundles[target])
    assert _entries(cache) == []
    monkeypatch.delenv("EDGEINFER_GRAPH_CACHE")
    first = _logits(gpt2_bundles[target])
    [entry] = _entries(cache)
    assert (entry / "model.onnx").is_file() and (entry / "model.onnx.data").stat().st_size > 0
    stored = (entry / "model.onnx").stat().st_mtime_ns
    second = _logits(gpt2_bundles[target])
    assert (entry / "model.onnx").stat().st_mtime_ns == stored  # read, not written again
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(second, plain)


def test_damaged_entry_is_replaced_and_bundles_get_their_own(cache, gpt2_bundles):
    want = _logits(gpt2_bundles["contrib"])
    [entry] = _entries(cache)
    (entry / "model.onnx.data").write_bytes(b"\0" * 10)
    np.testing.assert_array_equal(_logits(gpt2_bundles["contrib"]), want)
    assert _entries(cache) == [entry] and (entry / "model.onnx.data").stat().st_size > 10
    _logits(gpt2_bundles["standard"])
    assert len(_entries(cache)) == 2
