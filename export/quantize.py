"""Weight-only int8 for exported graphs: every MatMul against a constant weight becomes onnxruntime's
DynamicQuantizeMatMul (int8 weights, one scale per output channel; activations quantized per call).

Why: a decode step at batch 1 reads every weight once, so its floor is weight bytes ÷ memory bandwidth, and int8
weights are a quarter of fp32's. Encoders at long sequences are compute-bound instead, and this CPU's int8
dot-product instructions (VNNI) do about twice the fp32 work per cycle. The price is accuracy: export measures the
quantized graph against PyTorch like any other and records the error in the manifest.

CPU only: the CUDA provider has no DynamicQuantizeMatMul and would hand those nodes back to the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

QUANTIZATIONS = ("none", "int8")
INT8 = {
    "weights": "int8, symmetric, one scale per output channel",
    "activations": "uint8, dynamic (per call)",
    "op": "com.microsoft.DynamicQuantizeMatMul",
    "tool": "onnxruntime.quantization.quantize_dynamic",
}


def fold_weight_transposes(proto: onnx.ModelProto) -> int:
    """Replace Transpose(initializer) by a transposed initializer; returns how many were folded.

    A tied LM head reaches its MatMul through a Transpose of the embedding table; onnxruntime folds that at load
    time, but the quantizer only sees MatMuls with a constant weight, and the head is the largest of them.
    """
    initializers = {init.name: init for init in proto.graph.initializer}
    folded = []
    for node in proto.graph.node:
        if node.op_type != "Transpose" or node.input[0] not in initializers:
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        weight = numpy_helper.to_array(initializers[node.input[0]])
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.transpose(perm)), node.output[0]))
        folded.append(node)
    for node in folded:
        proto.graph.node.remove(node)
    return len(folded)


def quantize_int8(src: Path, dst: Path) -> None:
    """Write `src` with int8 weights to `dst` (see the module docstring)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(src))
    fold_weight_transposes(proto)
    quantize_dynamic(
        proto,
        dst,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        # our fused contrib ops (GroupQueryAttention...) defeat the quantizer's shape inference: weights are fp32
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
