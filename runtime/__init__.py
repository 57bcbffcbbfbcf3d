"""edgeinfer: a lightweight ONNX runtime for small transformer models (onnxruntime + numpy + tokenizers)."""

__version__ = "0.1.0"

from .errors import BundleError, EdgeInferError, InputError
from .loader import load

__all__ = ["BundleError", "EdgeInferError", "InputError", "__version__", "load"]
