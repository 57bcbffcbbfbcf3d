"""Weight-only int8 and int4 for exported graphs: every MatMul against a constant weight becomes onnxruntime's
DynamicQuantizeMatMul (int8 weights, one scale per output channel; activations quantized per call) or MatMulNBits
(4-bit weights in blocks of 32 along the input dimension, each block with its own scale and zero point).

Why: a decode step at batch 1 reads every weight once, so its floor is weight bytes ÷ memory bandwidth, and int8
weights are a quarter of fp32's. Encoders at long sequences are compute-bound instead, and this CPU's int8
dot-product instructions (VNNI) do about twice the fp32 work per cycle. int4 halves int8's bytes again; its
MatMulNBits kernel at accuracy level 4 quantizes the activations to int8 per block and runs the int8 dot products,
the fastest of its compute choices here (benchmarks/decode_step.py --int4-accuracy). The price is accuracy: export
measures the quantized graph against PyTorch like any other and records the error in the manifest.

int8 is CPU only: the CUDA provider has no DynamicQuantizeMatMul and would hand those nodes back to the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

QUANTIZATIONS = ("none", "int8", "int4")
INT4_BLOCK = 32
INT4_BLOCKS = (32, 64, 128)  # MatMulNBits block sizes (powers of two from 16; these are the ones measured)
# MatMulNBits' accuracy_level: the type its kernel computes in (1 fp32, 2 fp16, 3 bf16, 4 int8 activations)
INT4_ACCURACY_LEVELS = (1, 2, 3, 4)
INT4_ACCURACY_LEVEL = 4
RECORDS = {
    "int8": {
        "weights": "int8, symmetric, one scale per output channel",
        "activations": "uint8, dynamic (per call)",
        "op": "com.microsoft.DynamicQuantizeMatMul",
        "tool": "onnxruntime.quantization.quantize_dynamic",
    },
    "int4": {
        "weights": f"uint4, asymmetric, one scale and zero point per block of {INT4_BLOCK} input rows",
        "activations": f"int8 per block (MatMulNBits accuracy_level {INT4_ACCURACY_LEVEL})",
        "op": "com.microsoft.MatMulNBits",
        "tool": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer",
    },
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


def quantize_weights(src: Path, dst: Path, kind: str, int4_block: int = INT4_BLOCK) -> None:
    """Write `src` with `kind` ("int8" or "int4", in blocks of `int4_block` input rows) weights to `dst`."""
    if kind == "int4":
        quantize_int4(src, dst, block_size=int4_block)
    else:
        quantize_int8(src, dst)


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


def quantize_int4(src: Path, dst: Path, accuracy_level: int = INT4_ACCURACY_LEVEL, block_size: int = INT4_BLOCK) -> None:
    """Write `src` with 4-bit block-quantized weights to `dst` (see the module docstring); embedding tables that a
    Gather reads stay fp32, as with int8."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    if accuracy_level not in INT4_ACCURACY_LEVELS:
        raise ValueError(f"accuracy_level must be one of {INT4_ACCURACY_LEVELS}, got {accuracy_level!r}")
    proto = onnx.load(str(src))
    fold_weight_transposes(proto)
    if block_size not in INT4_BLOCKS:
        raise ValueError(f"block_size must be one of {INT4_BLOCKS}, got {block_size!r}")
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, accuracy_level=accuracy_level,
                                          op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(proto, algo_config=config)
    quantizer.process()
    onnx.save(quantizer.model.model, str(dst))
