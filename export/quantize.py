"""Smaller weights for exported graphs. For the CPU, weight-only int8 and int4: every MatMul against a constant weight
becomes onnxruntime's integer matmul (uint8 weights, one scale and zero point per output channel; activations
quantized to uint8 per call) or MatMulNBits (4-bit weights in blocks of 128 along the input dimension, or 32 on small
models, each block with its own scale and zero point). For CUDA, float16: the whole graph, weights, activations and
KV cache, in half precision, the logits cast back to float32.

Why: a decode step at batch 1 reads every weight once, so its floor is weight bytes ÷ memory bandwidth, and int8
weights are a quarter of fp32's. int4 halves int8's bytes again; its MatMulNBits kernel at accuracy level 4 quantizes
the activations to int8 per block and runs the int8 dot products, the fastest of its compute choices (levels 1-3,
fp32, fp16 and bf16 compute, run at fp32's speed). Blocks of 128 rather than 32 for models of GPT-2-small's size and
up: it decodes at 0.54x int8's ms/token at B=1 instead of 0.81x, for 0.7% more chat perplexity
(benchmarks/quantized_quality.py --int4-blocks); smaller models keep 32. float16 is what onnxruntime's CUDA
GroupQueryAttention kernel takes (float16 or bfloat16 only), so it is how a contrib bundle keeps its cache on the GPU;
onnxruntime's CPU kernels run it too (the tests check it there), with no speed to gain. The price is accuracy: export
measures the converted graph against PyTorch like any other and records the error in the manifest.

int8 weights are unsigned because signed ones are wrong on most x86 CPUs: without VNNI (AVX2, AVX-512 without VNNI,
SSE4.1) onnxruntime multiplies uint8 activations by int8 weights with `pmaddubsw`, which adds two products in 16 bits
and saturates once both weights of a pair pass about half their range. On an AMD EPYC with AVX2 and no VNNI
(benchmarks/results/cpu_features-avx2.md), a 768 x 3072 product was off by 7.2% of its largest output at one row and
14% at 3072 rows with int8 weights, 1.3% with uint8 ones, and the BERT-base QA encoder with int8 weights picked
another best span than fp32 in 2 of 8 windows (uint8: none). There the int8 kernel ran 1.7x faster at 3072 rows
(the encoder 1.2x); at one row the two were within each other's noise. 7-bit int8 weights (onnxruntime's
reduce_range) stay clear of the saturation for a bit of precision; uint8 weights take a kernel that widens to 16 bits
first and never saturates. What they may cost is onnxruntime's AMX and VNNI kernels, which it uses for int8 weights
only (results/cpu_features.md, a Xeon with AMX, measured int8 weights). `python -m edgeinfer.export.quantize sign
BUNDLE` rewrites a bundle's weights as int8 for such a CPU and `unsign` back, without changing a number (the weight
and its zero point move by 128); the runtime refuses a bundle with int8 weights on an x86 CPU without VNNI.

int8 is CPU only: the CUDA provider has no DynamicQuantizeMatMul and would hand those nodes back to the CPU.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeinfer.bundle import SIGNED_INT8, Manifest, inside, weight_storage
from edgeinfer.errors import EdgeInferError

QUANTIZATIONS = ("none", "int8", "int4", "float16")
INT4_BLOCK = 128
INT4_BLOCKS = (32, 64, 128, 256)  # MatMulNBits block sizes (powers of two from 16; these are the ones measured)
# below this many input rows in some weight, blocks of 32: a block of 128 would span most of a small model's rows
INT4_WIDE_BLOCK_MIN_ROWS = 512
# MatMulNBits' accuracy_level: the type its kernel computes in (1 fp32, 2 fp16, 3 bf16, 4 int8 activations)
INT4_ACCURACY_LEVELS = (1, 2, 3, 4)
INT4_ACCURACY_LEVEL = 4
RECORDS = {
    "int8": {
        "weights": "uint8, asymmetric, one scale and zero point per output channel",
        "activations": "uint8, dynamic (per call)",
        "op": "com.microsoft.DynamicQuantizeMatMul",
        "tool": "onnxruntime.quantization.quantize_dynamic",
    },
    "int4": {
        "weights": f"uint4, asymmetric, one scale and zero point per block of {INT4_BLOCK} input rows (32 when a "
                   f"weight has fewer than {INT4_WIDE_BLOCK_MIN_ROWS})",
        "activations": f"int8 per block (MatMulNBits accuracy_level {INT4_ACCURACY_LEVEL})",
        "op": "com.microsoft.MatMulNBits",
        "tool": "onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer",
    },
    "float16": {
        "weights": "float16",
        "activations": "float16, and the KV cache; logits cast to float32",
        "op": "every float op in float16",
        "tool": "onnxruntime.transformers.float16.convert_float_to_float16",
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


def quantize_weights(src: Path, dst: Path, kind: str, int4_block: int | None = None) -> None:
    """Write `src` with `kind` ("int8", "int4" in blocks of `int4_block` input rows (None: `int4_block_for` the graph),
    or "float16") weights to `dst`."""
    if kind == "int4":
        quantize_int4(src, dst, block_size=int4_block)
    elif kind == "float16":
        convert_float16(src, dst)
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
        weight_type=QuantType.QUInt8,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        # our fused contrib ops (GroupQueryAttention...) defeat the quantizer's shape inference: weights are fp32
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def int4_block_for(proto: onnx.ModelProto) -> int:
    """INT4_BLOCK when every MatMul weight has at least INT4_WIDE_BLOCK_MIN_ROWS input rows (GPT-2-small's size and
    up, where it was measured), else 32: on a small model a wide block spans most of a row and its error grows."""
    initializers = {init.name: init for init in proto.graph.initializer}
    rows = [initializers[node.input[1]].dims[0] for node in proto.graph.node
            if node.op_type == "MatMul" and node.input[1] in initializers and len(initializers[node.input[1]].dims) == 2]
    return INT4_BLOCK if rows and min(rows) >= INT4_WIDE_BLOCK_MIN_ROWS else 32


def quantize_int4(src: Path, dst: Path, accuracy_level: int = INT4_ACCURACY_LEVEL, block_size: int | None = None) -> None:
    """Write `src` with 4-bit block-quantized weights to `dst` (see the module docstring; block_size None:
    `int4_block_for` the graph); embedding tables that a Gather reads stay fp32, as with int8."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    if accuracy_level not in INT4_ACCURACY_LEVELS:
        raise ValueError(f"accuracy_level must be one of {INT4_ACCURACY_LEVELS}, got {accuracy_level!r}")
    proto = onnx.load(str(src))
    fold_weight_transposes(proto)
    block_size = int4_block_for(proto) if block_size is None else block_size
    if block_size not in INT4_BLOCKS:
        raise ValueError(f"block_size must be one of {INT4_BLOCKS}, got {block_size!r}")
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, accuracy_level=accuracy_level,
                                          op_types_to_quantize=("MatMul",))
    quantizer = MatMulNBitsQuantizer(proto, algo_config=config)
    quantizer.process()
    onnx.save(quantizer.model.model, str(dst))


def convert_float16(src: Path, dst: Path) -> None:
    """Write `src` in float16 to `dst`: inputs and outputs too (the KV cache), except the logits, kept float32 so that
    sampling and the callers' numbers do not change type."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # shape inference cannot see through our contrib ops (GroupQueryAttention): the converter works from the graph
    proto = convert_float_to_float16(onnx.load(str(src)), keep_io_types=["logits"], disable_shape_infer=True)
    onnx.save(proto, str(dst))


# where each integer matmul takes its weight and the weight's zero point
WEIGHT_INPUTS = {("", "MatMulInteger"): (1, 3), ("com.microsoft", "DynamicQuantizeMatMul"): (1, 4),
                 ("com.microsoft", "MatMulIntegerToFloat"): (1, 5)}
# signed -> how weights are stored: the quantization record's first word, the ONNX type, the numpy type
STORAGE = {True: (SIGNED_INT8, onnx.TensorProto.INT8, np.int8), False: ("uint8", onnx.TensorProto.UINT8, np.uint8)}


def shift_int8_weights(proto: onnx.ModelProto, signed: bool) -> int:
    """Rewrite every weight of an integer matmul, with its zero point (0 when absent), from uint8 to int8 (`signed`)
    or back: 128 lower or higher, the same numbers (see the module docstring for which kernel each takes). Every
    weight and zero point is checked before any is rewritten (ValueError). Returns how many weights changed."""
    initializers = {init.name: init for init in proto.graph.initializer}
    from_name, from_type, from_dtype = STORAGE[not signed]
    weights, readers = set(), Counter()  # readers: weight or zero-point name -> node inputs reading it as one
    for node in proto.graph.node:
        positions = WEIGHT_INPUTS.get((node.domain, node.op_type))
        weight = node.input[positions[0]] if positions and len(node.input) > positions[0] else None
        if weight not in initializers or initializers[weight].data_type != from_type:
            continue
        while len(node.input) <= positions[1]:
            node.input.append("")
        if not node.input[positions[1]]:
            node.input[positions[1]] = f"{weight}_zero_point"
            if node.input[positions[1]] not in initializers:
                proto.graph.initializer.append(numpy_helper.from_array(np.array(0, from_dtype), node.input[positions[1]]))
                initializers[node.input[positions[1]]] = proto.graph.initializer[-1]  # append copies
        weights.add(weight)
        readers.update((weight, node.input[positions[1]]))
    all_readers = Counter(name for node in proto.graph.node for name in node.input)
    for name, count in readers.items():
        if name not in initializers or initializers[name].data_type != from_type:
            raise ValueError(f"zero point {name} is not a constant {from_name}; not rewritten")
        if all_readers[name] != count:
            raise ValueError(f"initializer {name} is read by more than integer matmul weights; not rewritten")
    for name in readers:
        values = numpy_helper.to_array(initializers[name]).astype(np.int16) + (-128 if signed else 128)
        initializers[name].CopyFrom(numpy_helper.from_array(values.astype(STORAGE[signed][2]), name))
    return len(weights)


def shift_model_weights(path: Path, signed: bool) -> int:
    """`shift_int8_weights` on the graph file at `path`, rewritten in place; returns how many weights changed."""
    proto = onnx.load(str(path))
    changed = shift_int8_weights(proto, signed)
    onnx.save(proto, str(path))
    return changed


def shift_bundle_weights(folder: Path, signed: bool) -> int:
    """Rewrite an int8-quantized bundle in place with int8 (`signed`) or uint8 weights (`shift_int8_weights`), its
    manifest's quantization record and digests with it. Returns how many weights changed (0: the bundle was left as
    it was)."""
    folder, manifest = Manifest.read(folder)
    storage, rest = weight_storage(manifest)
    if storage != STORAGE[not signed][0]:
        return 0
    changed = shift_model_weights(inside(folder, "model", manifest["files"]["model"]), signed)
    manifest["quantization"] = {**manifest["quantization"], "weights": f"{STORAGE[signed][0]}, {rest}"}
    manifest.write(folder)
    return changed


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Move int8 bundles between CPUs: uint8 weights are right on every "
                                     "CPU, int8 ones take the VNNI and AMX kernels and are wrong without VNNI.")
    parser.add_argument("command", choices=["sign", "unsign"],
                        help="sign: weights as int8, for a CPU with VNNI or AMX; unsign: as uint8, for any CPU")
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle folders, rewritten in place")
    args = parser.parse_args(argv)
    signed = args.command == "sign"
    for folder in args.bundles:
        try:
            changed = shift_bundle_weights(folder, signed)
        except (EdgeInferError, ValueError) as exc:
            parser.exit(1, f"{parser.prog}: {folder}: {exc}\n")
        kind = STORAGE[signed][0]
        print(f"{folder}: {changed} weights rewritten as {kind}" if changed else f"{folder}: no weights to rewrite as {kind}")


if __name__ == "__main__":
    main()
