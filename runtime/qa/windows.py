"""Sliding windows over long passages and length-bucketed batches.

`stride` is the number of units two neighbouring windows share (Hugging Face's doc_stride): a span of at
most stride + 1 units never straddles every window it touches, so it lies whole inside one of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def windows(length: int, size: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) windows of at most `size` units covering `length` units, neighbours sharing `stride`."""
    if size < 1 or not 0 <= stride < size:
        raise ValueError(f"need size >= 1 and 0 <= stride < size, got size {size}, stride {stride}")
    if length <= size:
        return [(0, length)] if length else []
    step = size - stride
    starts = list(range(0, length - size, step)) + [length - size]
    return [(s, s + size) for s in starts]


def buckets(items: Sequence[T], key: Callable[[T], tuple[int, ...]], batch_size: int) -> list[list[T]]:
    """Items sorted by `key` (their lengths) and cut into batches, so a batch pads little."""
    ordered = sorted(items, key=key)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
