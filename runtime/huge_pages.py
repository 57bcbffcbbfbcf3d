"""Move long-lived host memory into 2 MiB pages (Linux transparent huge pages, `madvise(MADV_COLLAPSE)`).

Why: a decode step streams every weight once, and with 4 KiB pages that is a TLB miss every 4 KiB. Once
onnxruntime's weight buffers sit in huge pages, GPT-2-small decodes 7% faster at batch 1 and 4% at batch 16, a
Llama of the same size 11% and 7%, the int8 GPT-2-small 6% and 2% (`benchmarks/huge_pages.py`). onnxruntime
allocates and prepacks those buffers while it creates the session, where nothing can advise the memory before it is
written, so the pages are collapsed afterwards, which copies them (about 1 s for 500 MB on the 2-core machine). That
pays over a few thousand tokens, not over one short call: long-lived engines (`Engine.start`, the server) collapse,
`generate` does not, and `CausalLM.use_huge_pages()` lets an application decide. (numpy already asks for huge pages
for its large arrays, the KV cache among them.)

Only memory mapped while the session was created moves; weights that malloc placed in memory an earlier object had
freed stay in small pages. Nothing happens where it cannot: not Linux, transparent huge pages set to "never", or a
kernel before 6.1 (no MADV_COLLAPSE). The memory stays where it is either way; only its page size changes.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

HUGE_PAGE = 2 << 20
MADV_COLLAPSE = 25  # <asm-generic/mman-common.h>
Span = tuple[int, int]  # [start, end) addresses


def anonymous_mappings() -> set[Span]:
    """The process's private, writable, anonymous mappings: the brk heap and the chunks malloc got from mmap (empty
    off Linux)."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.readlines()
    except OSError:
        return set()
    spans = set()
    for line in lines:
        fields = line.split()  # address perms offset dev inode [path]; no path: anonymous
        if fields[5:] in ([], ["[heap]"]) and fields[1].startswith("rw") and fields[1].endswith("p"):
            start, end = (int(address, 16) for address in fields[0].split("-"))
            spans.add((start, end))
    return spans


@contextmanager
def new_mappings() -> Iterator[list[Span]]:
    """Yields a list that, when the block ends, holds the address ranges of anonymous memory mapped inside it and
    still mapped (a new mapping that the kernel merged with an older neighbour counts without the older part)."""
    made: list[Span] = []
    before = sorted(anonymous_mappings())
    yield made
    for start, end in sorted(anonymous_mappings()):
        for old_start, old_end in before:
            if old_start < end and start < old_end:  # overlaps: keep what lies outside the old mapping
                if start < old_start:
                    made.append((start, old_start))
                start = max(start, old_end)
        if start < end:
            made.append((start, end))


def huge_page_bytes() -> int:
    """Bytes of this process's anonymous memory in transparent huge pages now (0 where unknown)."""
    try:
        with open("/proc/self/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def collapse(spans: Iterable[Span]) -> int:
    """Move every whole 2 MiB page inside `spans` into a huge page; returns how many bytes of the process's memory
    joined huge pages (0 where the kernel cannot). MADV_COLLAPSE changes no flag of the mappings (memory they get
    later keeps the system's page size); ranges that refuse, such as thread stacks with their guard page, are left."""
    madvise = _madvise()
    if madvise is None:
        return 0
    before = huge_page_bytes()
    for start, end in spans:
        start = -(-start // HUGE_PAGE) * HUGE_PAGE
        end = end // HUGE_PAGE * HUGE_PAGE
        if end > start:
            madvise(start, end - start, MADV_COLLAPSE)  # an error for a range that refuses: nothing to do about it
    return max(0, huge_page_bytes() - before)


def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as setting:
            if "[never]" in setting.read():
                return None
    except OSError:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc.madvise
