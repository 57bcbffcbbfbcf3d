"""onnxruntime contrib fusions for our own "contrib"-target decoder exports, done once at export.

GroupQueryAttention(Split(qkv)) -> GroupQueryAttention(qkv) with packed QKV (key and value left empty): one node
and one copy fewer per layer, which matters at batch 1 where a node costs more in dispatch than in arithmetic.
The export's parity check against PyTorch holds the result to 1e-4.

Not done, on purpose: folding bias Add + residual Add + LayerNorm into com.microsoft.SkipLayerNormalization. Its
CPU kernel (onnxruntime 1.32) is slower than the three nodes, 1.1x for one row and up to 4x for 1536
(benchmarks/kernel_choices.py), so CPU sessions even switch off onnxruntime's own SkipLayerNorm fusion
(runtime/session.py).
"""

from __future__ import annotations

import onnx
from onnx import helper

from .fusion import GraphIndex, remove_dead_nodes


def _packed_qkv(g: GraphIndex, attention: onnx.NodeProto) -> str | None:
    """The un-split QKV projection, when this GroupQueryAttention's q, k, v are the 3 equal parts of one Split."""
    split = g.op(attention.input[0], "Split")
    if split is None or list(split.output) != list(attention.input[:3]) or len(split.input) > 1:
        return None
    axis = next((helper.get_attribute_value(a) for a in split.attribute if a.name == "axis"), 0)
    heads = {a.name: helper.get_attribute_value(a) for a in attention.attribute}
    if axis not in (-1, 2) or heads["num_heads"] != heads["kv_num_heads"]:
        return None
    if any(len(g.consumers[out]) != 1 or out in g.outputs for out in split.output):
        return None
    return split.input[0]


def fuse_contrib(model: onnx.ModelProto) -> int:
    """Apply the fusion above to `model` in place; returns how many attention nodes now read packed QKV."""
    g = GraphIndex(model.graph)
    packed = 0
    for node in model.graph.node:
        if node.op_type == "GroupQueryAttention" and node.domain == "com.microsoft":
            qkv = _packed_qkv(g, node)
            if qkv is not None:
                node.input[:3] = [qkv, "", ""]
                packed += 1
    remove_dead_nodes(model.graph)  # the Splits
    return packed
