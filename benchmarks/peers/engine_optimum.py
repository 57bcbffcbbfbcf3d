"""Hugging Face Optimum: the checkpoint exported to ONNX by optimum, run by onnxruntime under transformers' `generate`.

Runs in build/bench/venv-peers (optimum-onnx needs transformers < 4.58). Session options are passed explicitly so
onnxruntime gets the same thread count and graph optimizations as edgeinfer's session.
"""

from __future__ import annotations

from pathlib import Path

from common import Generate, engine_main
from hf_streamer import timed_generate


def prepare(spec: dict) -> None:
    """Export once with optimum's own exporter (ONNX with a KV cache, as `export=True` makes it) and keep the folder."""
    out = Path(spec["artifact"])
    if (out / "config.json").exists():
        return
    from optimum.onnxruntime import ORTModelForCausalLM

    ORTModelForCausalLM.from_pretrained(spec["checkpoint"], export=True).save_pretrained(out)
    print(f"  exported {out.name} with optimum", flush=True)


def load(spec: dict) -> Generate:
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    torch.set_num_threads(spec["threads"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    model = ORTModelForCausalLM.from_pretrained(spec["artifact"], session_options=options)

    def generate(rows: list[list[int]], n: int) -> tuple[list[list[int]], list[float], float]:
        with torch.inference_mode():
            return timed_generate(model, rows, n)

    return generate


if __name__ == "__main__":
    engine_main(prepare, load, ("optimum-onnx", "onnxruntime", "transformers", "torch"))
