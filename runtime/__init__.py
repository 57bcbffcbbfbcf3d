"""edgeinfer: a lightweight ONNX runtime for small transformer models (onnxruntime + numpy + tokenizers)."""

__version__ = "0.1.0"
