"""edgeinfer on a bundle exported from the checkpoint (`prepare`, needs torch), timed without torch (`run`).

The timing process must not import torch: edgeinfer's point is running with onnxruntime + numpy only, and torch's
import would add to its RSS and load time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import Generate, engine_main


def prepare(spec: dict) -> None:
    """Export the checkpoint to a bundle with the spec's attention target and quantization, once."""
    out = Path(spec["artifact"])
    if (out / "manifest.json").exists():
        return
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    manifest = export_hf_checkpoint(spec["checkpoint"], out, attention=spec["attention"],
                                    quantize=spec.get("quantize", "none"), tolerance=spec.get("tolerance"))
    print(f"  exported {out.name}: parity {manifest['parity']['max_abs_diff']:.2e}", flush=True)


def load(spec: dict, options=None) -> Generate:
    """Greedy streaming through the engine, its weights in huge pages; `options(rows)` adds stream options (the
    dialogue job's segments)."""
    import edgeinfer

    model = edgeinfer.load(spec["artifact"], device="cpu", threads=spec["threads"])
    model.use_huge_pages()  # as a long-lived engine does (Engine.start); part of the load time reported
    if "torch" in sys.modules:
        raise RuntimeError("the edgeinfer timing process imported torch")

    def generate(rows: list[list[int]], n: int) -> tuple[list[list[int]], list[float], float]:
        ids: list[list[int]] = [[] for _ in rows]
        arrivals = []
        t0 = time.perf_counter()
        extra = options(rows) if options else {}
        for event in model.stream(rows, max_new_tokens=n, min_new_tokens=n, stop_token_ids=[], **extra):
            ids[event.request].append(event.token_id)
            # step k is done when every row has its k-th token: the engine admits a burst of prompts over several
            # prefill rounds, so row 0's first token comes before the last rows are prefilled
            while len(arrivals) < min(map(len, ids)):
                arrivals.append(time.perf_counter() - t0)
        return ids, arrivals, time.perf_counter() - t0

    return generate


if __name__ == "__main__":
    engine_main(prepare, load, ("edgeinfer", "onnxruntime"))
