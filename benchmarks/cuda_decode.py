"""Decode on CUDA: edgeinfer's CUDA path against transformers on torch CUDA, same GPT-2-small-shaped weights.

`python benchmarks/cuda_decode.py [--batches 1 16] [--prompt 128] [--new 64]` on a machine with onnxruntime-gpu and
torch CUDA. Exports two bundles, the fp32 `standard`-attention one (opset-23 Attention has a float32 CUDA kernel)
and a `--quantize float16` contrib one (GroupQueryAttention's CUDA kernel takes float16/bfloat16 only), each timed
against transformers in the same precision; reports how many rows choose the same greedy tokens, ms/token after the
first token (medians of --repeats) and the time to first token.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from stream_timing import timing
from transformers import GPT2Config, GPT2LMHeadModel

import edgeinfer
from edgeinfer.export.hf_bundle import export_hf_checkpoint

VARIANTS = {"fp32 standard": {"attention": "standard"},
            "fp16 contrib": {"attention": "contrib", "quantize": "float16"}}


def torch_timing(model, prompts: np.ndarray, new: int, repeats: int) -> tuple[dict, np.ndarray]:
    """transformers `generate` on CUDA, greedy, with a per-token timer from a streamer-free loop of cached steps."""
    ids = torch.tensor(prompts, device="cuda")
    per_token, first_token = [], []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            out = model(ids, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            first = time.perf_counter()
            tokens = [token]
            for _ in range(new - 1):
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                tokens.append(token)
            torch.cuda.synchronize()
        end = time.perf_counter()
        first_token.append(first - start)
        per_token.append((end - first) / (new - 1))
    result = {"ms_per_token": round(1e3 * statistics.median(per_token), 3),
              "ttft_ms": round(1e3 * statistics.median(first_token), 2)}
    return result, torch.cat(tokens, dim=1).cpu().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257)).eval()
    rows: dict[str, dict] = {}
    for variant, export_options in VARIANTS.items():
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            export_hf_checkpoint(hf, Path(tmp) / "b", **export_options)
            print(f"{variant}: exported in {time.perf_counter() - started:.1f} s", flush=True)
            model = edgeinfer.load(Path(tmp) / "b", device="cuda")
        print(f"{variant}: provider {model.provider}, cache on {model.cache_device}: {model.providers.reason}", flush=True)
        peer = copy.deepcopy(hf).to("cuda")
        if export_options.get("quantize") == "float16":
            peer = peer.half()
        rows[variant] = {}
        for batch in args.batches:
            prompts = np.random.default_rng(0).integers(200, 50256, (batch, args.prompt))
            ours = [g.token_ids for g in model.generate(prompts.tolist(), max_new_tokens=args.new,
                                                        min_new_tokens=args.new, stop_token_ids=[], do_sample=False)]
            theirs, their_tokens = torch_timing(peer, prompts, args.new, args.repeats)
            agree = float(np.mean([list(a) == list(b) for a, b in zip(ours, their_tokens.tolist(), strict=True)]))
            rows[variant][batch] = {"edgeinfer_cuda": timing(model, batch, args.prompt, args.new, args.repeats),
                                    "torch_cuda_eager": theirs, "same_greedy_rows": agree}
            print(json.dumps({variant: {batch: rows[variant][batch]}}), flush=True)
        del model, peer
    print(json.dumps({"device": torch.cuda.get_device_name(0), "prompt": args.prompt, "new": args.new,
                      "results": rows}, indent=1))


if __name__ == "__main__":
    main()
