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


def buckets(items: Sequence[T], key: Callable[[T], tuple[int, ...]], batch_size: int,
            max_tokens: int | None = None) -> list[list[T]]:
    """Items sorted by `key` (lengths first) and cut into batches, so a batch pads little.

    A batch holds at most `batch_size` items and, when `max_tokens` is given, at most that many units counting each
    item as its longest member's length (`key(item)[0]`), but always at least one item.
    """
    ordered = sorted(items, key=key)
    batches: list[list[T]] = []
    for item in ordered:
        batch = batches[-1] if batches else None
        fits = batch is not None and len(batch) < batch_size
        if fits and max_tokens is not None:
            fits = (len(batch) + 1) * key(item)[0] <= max_tokens  # sorted: this item is the batch's longest
        if fits:
            batch.append(item)
        else:
            batches.append([item])
    return batches
