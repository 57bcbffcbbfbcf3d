"""`edgeinfer.load`: open any bundle as the object its task needs."""

from __future__ import annotations

from pathlib import Path

from .bundle import Manifest
from .errors import BundleError

BUNDLES = Path(__file__).parent / "bundles"
DEFAULT_BUNDLES = {
    "xiangqi": "python -m edgeinfer.export.train_xiangqi",
    "qa": "python -m edgeinfer.export.qa_bundle",
    "chat": "python -m edgeinfer.export.train_chat",
}


def default_bundle(name: str) -> Path:
    """The folder of a bundle shipped inside the package ("xiangqi", "qa", "chat")."""
    path = BUNDLES / name
    if not (path / "manifest.json").is_file():
        how = DEFAULT_BUNDLES.get(name, "an export command")
        raise BundleError(f"no default {name!r} bundle is installed at {path}; make it with `{how}`")
    return path


def load(path: str | Path, device: str = "auto", threads: int | None = None, verify: bool | None = None):
    """Validate the bundle at `path` and open it on onnxruntime (CUDA if present and asked for, else CPU).

    verify: check each file's sha256 against the manifest (default: yes, unless EDGEINFER_VERIFY=0).
    """
    folder, manifest = Manifest.read(path, verify)
    task = manifest["task"]
    if task in ("causal-lm", "chat", "xiangqi"):
        from .lm import CausalLM

        return CausalLM(folder, manifest, device=device, threads=threads)
    if task == "extractive-qa":
        from .qa import Reader

        return Reader(folder, manifest, device=device, threads=threads)
    if task == "masked-lm":
        from .mlm import MaskedLM

        return MaskedLM(folder, manifest, device=device, threads=threads)
    raise BundleError(f"task {task!r} has no runtime")
