"""onnxruntime contrib fusions for our own "contrib"-target decoder exports, done once at export.

onnxruntime's load-time optimizer leaves a pre-LayerNorm GPT block as bias Add, residual Add and LayerNorm
(twice per layer: its SkipLayerNorm fusion skips a residual sum that is read again), and feeds
GroupQueryAttention through a Split. At batch 1 each of those nodes costs more in dispatch than in arithmetic, so:
- LayerNorm(skip + (x + bias)) -> com.microsoft.SkipLayerNormalization(x, skip, gamma, beta, bias), whose fourth
  output is the residual sum itself when something else reads it (the next residual Add);
- GroupQueryAttention(Split(qkv)) -> GroupQueryAttention(qkv) with packed QKV (key and value left empty).
Both compute the same function; the export's parity check against PyTorch holds them to 1e-4.
"""

from __future__ import annotations

from collections import Counter

import onnx
from onnx import helper

from .fusion import GraphIndex, remove_dead_nodes


def _bias_add(g: GraphIndex, name: str) -> tuple[onnx.NodeProto, str, str] | None:
    """(the Add, x, bias) when `name` is Add(x, bias) with a 1-D constant bias, read by nothing else."""
    add = g.op(name, "Add")
    if add is None or len(g.consumers[name]) != 1 or name in g.outputs:
        return None
    for x, bias in (add.input, add.input[::-1]):
        value = g.constant(bias)
        if value is not None and value.ndim == 1 and g.constant(x) is None:
            return add, x, bias
    return None


def _skip_layer_norm(g: GraphIndex, norm: onnx.NodeProto, index: int) -> tuple[onnx.NodeProto, list] | None:
    """(SkipLayerNormalization, the residual Add, bias Add and LayerNorm it replaces), or None.

    The fused node takes the residual Add's place in the node order: its inputs exist there, and every reader of
    the residual sum comes after it.
    """
    attributes = {a.name: helper.get_attribute_value(a) for a in norm.attribute}
    residual = g.op(norm.input[0], "Add")
    if attributes.get("axis", -1) != -1 or residual is None or len(norm.input) < 3:
        return None
    total = residual.output[0]
    for branch, skip in (residual.input, residual.input[::-1]):
        biased = _bias_add(g, branch)
        if biased is None:
            continue
        bias_add, x, bias = biased
        read_elsewhere = total in g.outputs or len(g.consumers[total]) > 1
        outputs = [norm.output[0], "", "", total] if read_elsewhere else [norm.output[0]]
        fused = helper.make_node("SkipLayerNormalization", [x, skip, norm.input[1], norm.input[2], bias], outputs,
                                 name=f"skip_layer_norm_{index}", domain="com.microsoft",
                                 epsilon=attributes.get("epsilon", 1e-5))
        return fused, [residual, bias_add, norm]
    return None


def _packed_qkv(g: GraphIndex, attention: onnx.NodeProto) -> onnx.NodeProto | None:
    """The same GroupQueryAttention reading the un-split projection, when q, k, v are the 3 equal parts of one Split."""
    split = g.op(attention.input[0], "Split")
    if split is None or list(split.output) != list(attention.input[:3]) or len(split.input) > 1:
        return None
    axis = next((helper.get_attribute_value(a) for a in split.attribute if a.name == "axis"), 0)
    heads = {a.name: helper.get_attribute_value(a) for a in attention.attribute}
    if axis not in (-1, 2) or heads["num_heads"] != heads["kv_num_heads"]:
        return None
    if any(len(g.consumers[out]) != 1 or out in g.outputs for out in split.output):
        return None
    packed = onnx.NodeProto()
    packed.CopyFrom(attention)
    packed.input[:3] = [split.input[0], "", ""]
    return packed


def fuse_contrib(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Counter]:
    """Return `model` with the fusions above (in place) and a count of each one made."""
    g = GraphIndex(model.graph)
    made: Counter = Counter()
    replacement: dict[int, onnx.NodeProto | None] = {}  # id(node) -> its replacement, None: dropped
    for node in model.graph.node:
        if node.op_type == "LayerNormalization":
            match = _skip_layer_norm(g, node, made["skip_layer_norm"])
            if match and not any(id(old) in replacement for old in match[1]):
                fused, (residual, *dropped) = match
                replacement[id(residual)] = fused
                replacement.update({id(old): None for old in dropped})
                made["skip_layer_norm"] += 1
        elif node.op_type == "GroupQueryAttention" and node.domain == "com.microsoft":
            packed = _packed_qkv(g, node)
            if packed is not None:
                replacement[id(node)] = packed
                replacement[id(g.producer[node.input[0]])] = None  # the Split
                made["packed_qkv"] += 1
    nodes = [replacement.get(id(node), node) for node in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(n for n in nodes if n is not None)
    remove_dead_nodes(model.graph)
    return model, made
