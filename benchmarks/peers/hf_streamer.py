"""Per-step token times inside a transformers `generate` call, shared by the hf-torch and optimum engines."""

from __future__ import annotations

import time

from transformers.generation.streamers import BaseStreamer


class StepClock(BaseStreamer):
    """`generate` puts the prompt first, then each step's new tokens: every put after the first marks a step."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.prompt_seen = False
        self.arrivals: list[float] = []

    def put(self, value) -> None:
        if self.prompt_seen:
            self.arrivals.append(time.perf_counter() - self.start)
        self.prompt_seen = True

    def end(self) -> None:
        pass


def timed_generate(model, rows: list[list[int]], n: int, **extra) -> tuple[list[list[int]], list[float], float]:
    """Greedy `generate` of exactly n tokens with eos off: (every row's new ids, step times, total seconds).

    `extra` goes to `generate` as it is (a static cache, say)."""
    import torch

    ids = torch.tensor(rows, dtype=torch.long)
    clock = StepClock()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                         min_new_tokens=n, eos_token_id=None, pad_token_id=0, streamer=clock, **extra)
    total = time.perf_counter() - clock.start
    return out[:, ids.shape[1]:].tolist(), clock.arrivals, total
