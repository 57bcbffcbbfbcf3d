"""Training-side code: PyTorch models, checkpoint import, ONNX export to bundles. Needs the [export] extra."""

import sys
from pathlib import Path

# A source checkout's root holds `kernels/` (imported as `edgeinfer.kernels`). With the root on sys.path, as
# `python -m ...` run from it puts it, that folder shadows Hugging Face's `kernels` package, which transformers
# (>= 5.2x) imports and then fails on. Nothing is imported from the root by its own name, so it is dropped.
_CHECKOUT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _CHECKOUT or not (_CHECKOUT / "kernels").is_dir()]
