"""Fused operators: numpy references, ONNX emission and fusion passes (torch modules live in kernels.modules)."""
