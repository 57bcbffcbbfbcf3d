"""Time to first token inside a transformers `generate` call, shared by the hf-torch and optimum engines."""

from __future__ import annotations

import time

from transformers.generation.streamers import BaseStreamer


class FirstTokenClock(BaseStreamer):
    """`generate` puts the prompt first, then each step's new tokens: the second put marks the first token."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.puts = 0
        self.first_s: float | None = None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_s = time.perf_counter() - self.start

    def end(self) -> None:
        pass


def timed_generate(model, rows: list[list[int]], n: int) -> tuple[list[int], float, float]:
    """Greedy `generate` of exactly n tokens with eos off; (row-0 new ids, seconds to first token, total seconds)."""
    import torch

    ids = torch.tensor(rows, dtype=torch.long)
    clock = FirstTokenClock()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         min_new_tokens=n, eos_token_id=None, pad_token_id=0, streamer=clock)
    total = time.perf_counter() - clock.start
    return out[0, ids.shape[1]:].tolist(), clock.first_s, total
