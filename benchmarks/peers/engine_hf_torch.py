"""transformers' own PyTorch `generate` on the checkpoint: what a user gets with no extra engine at all."""

from __future__ import annotations

from common import Generate, measure, read_spec
from hf_streamer import timed_generate


def load(spec: dict) -> Generate:
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(spec["threads"])
    model = GPT2LMHeadModel.from_pretrained(spec["checkpoint"]).eval()

    def generate(rows: list[list[int]], n: int) -> tuple[list[int], float, float]:
        with torch.inference_mode():
            return timed_generate(model, rows, n)

    return generate


if __name__ == "__main__":
    mode, spec = read_spec()
    if mode == "run":  # nothing to prepare: it reads the checkpoint itself
        measure(spec, lambda: load(spec), ("torch", "transformers"))
