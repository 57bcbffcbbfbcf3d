"""A dialogue turn: the laid-out history ([CLS] u1 [SEP] u2 [SEP] ..., speaker segments) in, a greedy reply out.

- `edgeinfer`: the dialogue bundle through the decode engine (KV cache bound by IO binding); no torch imported;
- `torch-eager`: the same trained weights (the training checkpoint, model.pt) in PyTorch, with its own KV cache.
Both generate exactly `new_tokens` tokens (no stop at [SEP]) so they do the same work.
"""

from __future__ import annotations

import time

import engine_edgeinfer
from common import Generate, measure, read_spec


def load_edgeinfer(spec: dict) -> Generate:
    def options(rows: list[list[int]]) -> dict:
        return {"segment_ids": spec["segments"][: len(rows)], "reply_segment": spec["reply_segment"],
                "do_sample": False}

    return engine_edgeinfer.load(spec, options)


def load_torch(spec: dict) -> Generate:
    import torch

    from edgeinfer.export.gpt import GPT, GPTConfig

    torch.set_num_threads(spec["threads"])
    checkpoint = torch.load(spec["checkpoint"], map_location="cpu")
    model = GPT(GPTConfig(**checkpoint["config"])).eval()
    model.load_state_dict(checkpoint["state_dict"])
    cfg = model.cfg

    @torch.inference_mode()
    def generate(rows: list[list[int]], n: int) -> tuple[list[list[int]], list[float], float]:
        t0 = time.perf_counter()
        ids = torch.tensor(rows)
        batch, length = ids.shape
        types = torch.tensor(spec["segments"][:batch])
        past = [torch.zeros(batch, cfg.n_head, 0, cfg.head_dim) for _ in range(2 * cfg.n_layer)]
        positions = torch.arange(length).expand(batch, length)
        out, arrivals = [], []
        for _ in range(n):
            mask = torch.ones(batch, positions[0, -1].item() + 1, dtype=torch.long)
            last = torch.full((batch, 1), ids.shape[1] - 1)
            logits, past = model(ids, positions, mask, last, past, types)
            token = logits[:, -1].argmax(-1, keepdim=True)
            arrivals.append(time.perf_counter() - t0)
            out.append(token[:, 0].tolist())
            ids, positions = token, positions[:, -1:] + 1
            types = torch.full((batch, 1), spec["reply_segment"])
        return [list(row) for row in zip(*out)], arrivals, time.perf_counter() - t0

    return generate


if __name__ == "__main__":
    mode, spec = read_spec()
    if mode == "run":  # both read artifacts made by the training scripts; nothing to prepare
        if spec["engine"] == "edgeinfer":
            measure(spec, lambda: load_edgeinfer(spec), ("edgeinfer", "onnxruntime"))
        else:
            measure(spec, lambda: load_torch(spec), ("torch",))
