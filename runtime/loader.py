"""`edgeinfer.load`: open any bundle as the object its task needs."""

from __future__ import annotations

from pathlib import Path

from .bundle import read_manifest


def load(path: str | Path, device: str = "auto", threads: int | None = None):
    """Validate the bundle at `path` and open it on onnxruntime (CUDA if present and asked for, else CPU)."""
    folder, manifest = read_manifest(path)
    task = manifest["task"]
    if task in ("causal-lm", "chat", "xiangqi"):
        from .causal_lm import CausalLM

        return CausalLM(folder, manifest, device=device, threads=threads)
    raise NotImplementedError(f"task {task!r} has no runtime yet")
