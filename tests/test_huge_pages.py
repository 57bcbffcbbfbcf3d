"""Moving memory into 2 MiB pages: which mappings a block made, that collapsing keeps the bytes, and the model's weights."""

from __future__ import annotations

import ctypes
import json
import mmap
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeinfer import huge_pages


def _kernel_collapses() -> bool:
    """Linux 6.1 or later with transparent huge pages not switched off: what MADV_COLLAPSE needs."""
    if not sys.platform.startswith("linux"):
        return False
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    major, minor = (int(part) for part in platform.release().split(".")[:2])
    return setting.exists() and "[never]" not in setting.read_text() and (major, minor) >= (6, 1)


needs_collapse = pytest.mark.skipif(not _kernel_collapses(), reason="needs Linux >= 6.1 with transparent huge pages")


def _anonymous(size: int) -> tuple[mmap.mmap, int]:
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return memory, ctypes.addressof(ctypes.c_char.from_buffer(memory))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_new_mappings_holds_what_the_block_mapped_and_nothing_from_before():
    before, before_at = _anonymous(8 << 20)
    with huge_pages.new_mappings() as made:
        inside, inside_at = _anonymous(8 << 20)
        assert made == []  # filled when the block ends
    assert any(start <= inside_at < end for start, end in made)
    assert not any(start <= before_at < end for start, end in made)
    inside.close()
    before.close()


@needs_collapse
def test_collapse_moves_touched_memory_into_huge_pages_and_keeps_its_bytes():
    size = 32 << 20
    memory, address = _anonymous(size)
    pattern = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    np.frombuffer(memory, np.uint8)[:] = pattern  # every 4 KiB page faulted in on its own
    moved = huge_pages.collapse([(address, address + size)])
    assert moved >= size - 2 * huge_pages.HUGE_PAGE  # the unaligned ends stay in small pages
    assert np.array_equal(np.frombuffer(memory, np.uint8), pattern)
    memory.close()


def test_collapse_of_nothing_moves_nothing():
    assert huge_pages.collapse([]) == 0
    assert huge_pages.collapse([(4096, 8192)]) == 0  # no whole 2 MiB page inside


MOVE_WEIGHTS = """
import json, sys
import numpy as np
import edgeinfer
from edgeinfer.loader import default_bundle
model = edgeinfer.load(default_bundle("chat"), device="cpu", threads=1)
ids = np.random.default_rng(0).integers(0, model.vocab_size, (2, 24))
before = model.logits(ids)
first, after, second = model.use_huge_pages(), model.logits(ids), model.use_huge_pages()
print(json.dumps({"first": first, "second": second, "same": bool(np.array_equal(after, before))}))
"""


@needs_collapse
def test_a_model_moves_its_weights_once_and_answers_the_same():
    # a fresh process, as a server starts: in a long-lived one malloc may reuse freed memory that existed before
    result = subprocess.run([sys.executable, "-c", MOVE_WEIGHTS], check=True, capture_output=True, text=True, timeout=120)
    moved = json.loads(result.stdout.splitlines()[-1])
    assert moved["first"] >= 4 << 20  # of the bundle's 12 MB of fp32 MatMul weights
    assert moved["second"] == 0 and moved["same"]


def test_huge_pages_can_be_switched_off(lively_bundles, monkeypatch):
    import edgeinfer
    from edgeinfer.errors import InputError

    model = edgeinfer.load(lively_bundles["contrib"], device="cpu")
    monkeypatch.setenv("EDGEINFER_HUGE_PAGES", "0")
    calls = []
    monkeypatch.setattr("edgeinfer.lm.model.collapse", lambda spans: calls.append(spans) or 1)
    assert model.use_huge_pages() == 0 and calls == []
    monkeypatch.setenv("EDGEINFER_HUGE_PAGES", "yes")
    with pytest.raises(InputError, match="EDGEINFER_HUGE_PAGES must be 0 or 1"):
        model.use_huge_pages()
    monkeypatch.setenv("EDGEINFER_HUGE_PAGES", "1")
    assert model.use_huge_pages() == 1 and len(calls) == 1
