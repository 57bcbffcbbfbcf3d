"""Fusion passes: rewrite decomposed GELU and attention patterns in a foreign ONNX graph into single nodes.

Graphs exported by other tools (the torch exporters at opset 18, say) spell GELU and attention as chains of
elementwise ops. These passes find those chains and replace each with the one node that computes the same
function (kernels/gelu.py, kernels/attention.py):
- x*0.5*(1+erf(x/sqrt2))                       -> Gelu(approximate="none")
- x*0.5*(1+tanh(sqrt(2/pi)(x+0.044715 x^3)))   -> Gelu(approximate="tanh")  (never exact: a different function)
- x*sigmoid(1.702 x)                           -> com.microsoft.QuickGelu(alpha=1.702)
- Softmax(Q K^T * scale + bias) V              -> Attention (opset 23), scale and additive mask carried over
The graph is raised to opset 23 first (the version converter keeps the other ops' meaning).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .gelu import SIGMOID_ALPHA

TARGET_OPSET = 23
_TOL = 1e-3  # relative tolerance when recognising a constant (exporters round them differently)


@dataclass
class FusionReport:
    before: dict[str, int]
    after: dict[str, int] = field(default_factory=dict)
    fused: Counter = field(default_factory=Counter)


class GraphIndex:
    """Producer/consumer maps and constant lookup over a GraphProto."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.initializers = {init.name: init for init in graph.initializer}
        self.outputs = {out.name for out in graph.output}

    def constant(self, name: str) -> np.ndarray | None:
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
        return None

    def scalar(self, name: str) -> float | None:
        value = self.constant(name)
        if value is None or value.size != 1:
            return None
        return float(value.reshape(()))

    def op(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def factors(self, name: str) -> list[str]:
        """Leaves of the Mul tree that produces `name` (following only single-use intermediate products)."""
        node = self.op(name, "Mul")
        if node is None:
            return [name]
        leaves = []
        for operand in node.input:
            inner = self.op(operand, "Mul")
            if inner is not None and len(self.consumers[operand]) == 1:
                leaves += self.factors(operand)
            else:
                leaves.append(operand)
        return leaves

    def close(self, value: float | None, target: float) -> bool:
        return value is not None and abs(value - target) <= _TOL * abs(target)


def _split_constants(g: GraphIndex, leaves: list[str]) -> tuple[float, list[str]]:
    product, rest = 1.0, []
    for leaf in leaves:
        value = g.scalar(leaf)
        if value is None:
            rest.append(leaf)
        else:
            product *= value
    return product, rest


def _one_plus(g: GraphIndex, name: str, op_type: str) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """(Add node, inner node) when `name` is 1 + op_type(...)."""
    add = g.op(name, "Add")
    if add is None:
        return None
    for a, b in (add.input, add.input[::-1]):
        inner = g.op(a, op_type)
        if inner is not None and g.close(g.scalar(b), 1.0):
            return add, inner
    return None


def _gelu_output(g: GraphIndex, add_name: str, x: str) -> onnx.NodeProto | None:
    """The Mul node computing x * 0.5 * add_name, found by walking up single-use products."""
    name = add_name
    while len(g.consumers[name]) == 1 and g.consumers[name][0].op_type == "Mul":
        node = g.consumers[name][0]
        scale, rest = _split_constants(g, g.factors(node.output[0]))
        if sorted(rest) == sorted([x, add_name]) and g.close(scale, 0.5):
            return node
        name = node.output[0]
    # x*0.5 computed on its own branch: Mul(Mul(x, 0.5), add)
    for node in g.consumers[add_name]:
        if node.op_type == "Mul":
            other = node.input[1] if node.input[0] == add_name else node.input[0]
            scale, rest = _split_constants(g, g.factors(other))
            if rest == [x] and g.close(scale, 0.5):
                return node
    return None


def _match_erf_gelu(g: GraphIndex, erf: onnx.NodeProto):
    arg = erf.input[0]
    div = g.op(arg, "Div")
    if div is not None and g.close(g.scalar(div.input[1]), math.sqrt(2.0)):
        x = div.input[0]
    else:
        scale, rest = _split_constants(g, g.factors(arg))
        if len(rest) != 1 or not g.close(scale, 1 / math.sqrt(2.0)):
            return None
        x = rest[0]
    for add in g.consumers[erf.output[0]]:
        if add.op_type == "Add" and _one_plus(g, add.output[0], "Erf"):
            out = _gelu_output(g, add.output[0], x)
            if out is not None:
                return x, out, "exact"
    return None


def _is_cube_term(g: GraphIndex, name: str, x: str) -> bool:
    scale, rest = _split_constants(g, g.factors(name))
    if rest == [x, x, x] or sorted(rest) == sorted([x, x, x]):
        return g.close(scale, 0.044715)
    if len(rest) == 1:
        pow_node = g.op(rest[0], "Pow")
        return bool(pow_node and pow_node.input[0] == x and g.close(g.scalar(pow_node.input[1]), 3.0)) and g.close(
            scale, 0.044715
        )
    return False


def _match_tanh_gelu(g: GraphIndex, tanh: onnx.NodeProto):
    scale, rest = _split_constants(g, g.factors(tanh.input[0]))
    if len(rest) != 1 or not g.close(scale, math.sqrt(2.0 / math.pi)):
        return None
    inner = g.op(rest[0], "Add")
    if inner is None:
        return None
    for x, cube in (inner.input, inner.input[::-1]):
        if _is_cube_term(g, cube, x):
            break
    else:
        return None
    for add in g.consumers[tanh.output[0]]:
        if add.op_type == "Add" and _one_plus(g, add.output[0], "Tanh"):
            out = _gelu_output(g, add.output[0], x)
            if out is not None:
                return x, out, "tanh"
    return None


def _match_sigmoid_gelu(g: GraphIndex, sigmoid: onnx.NodeProto):
    scale, rest = _split_constants(g, g.factors(sigmoid.input[0]))
    if len(rest) != 1 or not g.close(scale, SIGMOID_ALPHA):
        return None
    x = rest[0]
    for out in g.consumers[sigmoid.output[0]]:
        if out.op_type == "Mul" and sorted(out.input) == sorted([x, sigmoid.output[0]]):
            return x, out, "sigmoid"
    return None


_GELU_MATCHERS = {"Erf": _match_erf_gelu, "Tanh": _match_tanh_gelu, "Sigmoid": _match_sigmoid_gelu}


def _gelu_node(x: str, y: str, form: str, index: int) -> onnx.NodeProto:
    if form == "sigmoid":
        return helper.make_node("QuickGelu", [x], [y], name=f"fused_gelu_{index}", domain="com.microsoft",
                                alpha=SIGMOID_ALPHA)
    approximate = "none" if form == "exact" else "tanh"
    return helper.make_node("Gelu", [x], [y], name=f"fused_gelu_{index}", approximate=approximate)


def _match_attention(g: GraphIndex, softmax: onnx.NodeProto):
    """Softmax(MatMul(Q*a, Kt*b) [+ bias]) [NaN guard] -> MatMul(., V): (q, kt, v, bias, scale, out_node)."""
    axis = next((helper.get_attribute_value(a) for a in softmax.attribute if a.name == "axis"), -1)
    if axis not in (-1, 3):
        return None
    scores, bias = softmax.input[0], ""
    add = g.op(scores, "Add")
    if add is not None:
        for a, b in (add.input, add.input[::-1]):
            if g.op(a, "MatMul") is not None:
                scores, bias = a, b
                break
        else:
            return None
    scale = 1.0
    div = g.op(scores, "Div")
    if div is not None and g.scalar(div.input[1]):
        scale, scores = 1.0 / g.scalar(div.input[1]), div.input[0]
    qk = g.op(scores, "MatMul")
    if qk is None:
        return None
    operands = []
    for operand in qk.input:
        factor, rest = _split_constants(g, g.factors(operand))
        if len(rest) != 1:
            return None
        scale *= factor
        operands.append(rest[0])
    probs = softmax.output[0]
    users = g.consumers[probs]
    guard = [n for n in users if n.op_type == "IsNaN"]
    if guard:  # Where(IsNaN(p), 0, p): fully masked rows become zeros
        where = [n for n in users if n.op_type == "Where"]
        if len(where) != 1:
            return None
        probs, users = where[0].output[0], g.consumers[where[0].output[0]]
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != probs:
        return None
    return operands[0], operands[1], users[0].input[1], bias, scale, users[0]


def remove_dead_nodes(graph: onnx.GraphProto) -> None:
    live = {out.name for out in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(out in live for out in node.output):
            kept.append(node)
            live.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = [init for init in graph.initializer if init.name in live]
    del graph.initializer[:]
    graph.initializer.extend(used)


def _ensure_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), TARGET_OPSET)
    if version < TARGET_OPSET:
        model = onnx.version_converter.convert_version(model, TARGET_OPSET)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def census(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def fuse(model: onnx.ModelProto) -> tuple[onnx.ModelProto, FusionReport]:
    """Return a fused copy of `model` and a report of node counts before and after."""
    report = FusionReport(before=census(model))
    model = _ensure_opsets(onnx.ModelProto.FromString(model.SerializeToString()))
    graph = model.graph
    g = GraphIndex(graph)
    replacements: dict[int, onnx.NodeProto] = {}  # id of the node a fused node takes the place of
    for node in list(graph.node):
        matcher = _GELU_MATCHERS.get(node.op_type)
        match = matcher(g, node) if matcher else None
        if match:
            x, out, form = match
            replacements[id(out)] = _gelu_node(x, out.output[0], form, len(replacements))
            report.fused[f"gelu_{form}"] += 1
        elif node.op_type == "Softmax":
            attention = _match_attention(g, node)
            if attention:
                q, kt, v, bias, scale, out = attention
                k = f"{out.output[0]}_keys"
                i = len(replacements)
                transpose = helper.make_node("Transpose", [kt], [k], name=f"fused_attention_{i}_kt", perm=[0, 1, 3, 2])
                fused = helper.make_node("Attention", [q, k, v, bias], [out.output[0]], name=f"fused_attention_{i}",
                                         scale=scale)
                replacements[id(out)] = (transpose, fused)
                report.fused["attention"] += 1
    new_nodes = []
    for node in graph.node:
        new = replacements.get(id(node))
        if new is None:
            new_nodes.append(node)
        else:
            new_nodes.extend(new if isinstance(new, tuple) else (new,))
    del graph.node[:]
    graph.node.extend(new_nodes)
    remove_dead_nodes(graph)
    del graph.value_info[:]
    report.after = census(model)
    return model, report
