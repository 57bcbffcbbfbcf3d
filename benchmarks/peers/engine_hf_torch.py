"""transformers' own PyTorch `generate` on the checkpoint: what a user gets with no extra engine at all.

With `"compile": true` in the spec the model's forward goes through `torch.compile` (inductor, dynamic shapes, so
prefill and every decode step's growing cache share one compiled graph); the compile happens in the warm-up call.
"""

from __future__ import annotations

from common import Generate, measure, read_spec
from hf_streamer import timed_generate


def load(spec: dict) -> Generate:
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(spec["threads"])
    model = GPT2LMHeadModel.from_pretrained(spec["checkpoint"]).eval()
    if spec.get("compile"):
        model.forward = torch.compile(model.forward, dynamic=True)

    def generate(rows: list[list[int]], n: int) -> tuple[list[list[int]], list[float], float]:
        with torch.inference_mode():
            return timed_generate(model, rows, n)

    return generate


if __name__ == "__main__":
    mode, spec = read_spec()
    if mode == "run":  # nothing to prepare: it reads the checkpoint itself
        measure(spec, lambda: load(spec), ("torch", "transformers"))
