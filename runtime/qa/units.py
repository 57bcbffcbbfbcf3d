"""What a reader backend turns text into: model ids per unit and each unit's character offsets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Encoded:
    """A text as units (characters or tokens): ids (n, channels) and [start, end) character offsets (n, 2)."""

    ids: np.ndarray
    offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Window:
    """Units [start, end) of passage `passage` of question `question`: one row of a model batch."""

    question: int
    passage: int
    q: Encoded
    p: Encoded
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def pad_rows(rows: list[np.ndarray], fill: int = 0) -> np.ndarray:
    """Right-pad 1-D int arrays to one (batch, longest) int64 array."""
    out = np.full((len(rows), max(len(r) for r in rows)), fill, dtype=np.int64)
    for b, row in enumerate(rows):
        out[b, : len(row)] = row
    return out
