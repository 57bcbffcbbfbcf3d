"""transformers' own PyTorch `generate` on the checkpoint: what a user gets with no extra engine at all.

With `"compile": true` in the spec, transformers' own compiled path runs instead: a `StaticCache` of one fixed length
(prompt + the spec's new tokens) and `generate`'s auto-compile of the decode step (`torch.compile`, inductor) switched
on for the CPU. The fixed length keeps every shape the same, so compilation happens once per batch size, in the
warm-up call. (Compiling the plain forward with a growing cache recompiles at every step and falls back to eager.)
"""

from __future__ import annotations

from common import Generate, engine_main
from hf_streamer import timed_generate


def load(spec: dict) -> Generate:
    import torch
    from transformers import CompileConfig, GPT2LMHeadModel, StaticCache

    torch.set_num_threads(spec["threads"])
    model = GPT2LMHeadModel.from_pretrained(spec["checkpoint"]).eval()
    if spec.get("compile"):
        config = CompileConfig(fullgraph=True, dynamic=False)
        config._compile_all_devices = True  # transformers compiles only on accelerators unless told otherwise
        model.generation_config.compile_config = config
    cache_len = len(spec["prompts"][0]) + spec["new_tokens"]

    def generate(rows: list[list[int]], n: int) -> tuple[list[list[int]], list[float], float]:
        extra = {"cache": StaticCache(config=model.config, max_cache_len=cache_len)} if spec.get("compile") else {}
        with torch.inference_mode():
            return timed_generate(model, rows, n, **extra)

    return generate


if __name__ == "__main__":
    engine_main(None, load, ("torch", "transformers"))
