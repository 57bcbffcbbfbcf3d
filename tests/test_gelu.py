"""GELU forms: numpy references, single-node ONNX emission, and fusion of decomposed patterns."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgeinfer.kernels.fusion import fuse
from edgeinfer.kernels.gelu import (
    GELU_FORMS,
    GELU_REFERENCE,
    gelu_exact,
    max_error_vs_exact,
    onnx_node_spec,
)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _graph(nodes, initializers=(), opset=20) -> onnx.ModelProto:
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "g", [value("x", TensorProto.FLOAT, None)], [value("y", TensorProto.FLOAT, None)], list(initializers)
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])


def _const(name: str, value: float) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [], [value])


def test_reference_error_table():
    # the table in kernels/README.md
    assert max_error_vs_exact("exact") == 0.0
    assert max_error_vs_exact("tanh") == pytest.approx(4.73e-4, rel=0.01)
    assert max_error_vs_exact("sigmoid") == pytest.approx(0.0203, rel=0.01)


def test_exact_reference_matches_erf_definition():
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    expected = [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x]
    np.testing.assert_allclose(gelu_exact(x), expected, rtol=1e-15)


@pytest.mark.parametrize("form", GELU_FORMS)
def test_single_node_matches_reference(form):
    rng = np.random.default_rng()
    shape = tuple(rng.integers(1, 9, size=rng.integers(1, 4)))
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    x.flat[0] = -10.0
    op_type, domain, attrs = onnx_node_spec(form)
    y = _run(_graph([helper.make_node(op_type, ["x"], ["y"], domain=domain, **attrs)]), x)
    np.testing.assert_allclose(y, GELU_REFERENCE[form](x), atol=2e-6, rtol=1e-5)


def _erf_pattern():
    return _graph(
        [
            helper.make_node("Div", ["x", "sqrt2"], ["a"]),
            helper.make_node("Erf", ["a"], ["b"]),
            helper.make_node("Add", ["b", "one"], ["c"]),
            helper.make_node("Mul", ["x", "c"], ["d"]),
            helper.make_node("Mul", ["d", "half"], ["y"]),
        ],
        [_const("sqrt2", math.sqrt(2)), _const("one", 1.0), _const("half", 0.5)],
        opset=18,
    )


def _tanh_pattern():
    # the spelling of transformers' NewGELUActivation: 0.5*x*(1+tanh(c*(x+0.044715*pow(x,3))))
    return _graph(
        [
            helper.make_node("Mul", ["x", "half"], ["hx"]),
            helper.make_node("Pow", ["x", "three"], ["x3"]),
            helper.make_node("Mul", ["x3", "k"], ["kx3"]),
            helper.make_node("Add", ["x", "kx3"], ["inner"]),
            helper.make_node("Mul", ["inner", "c"], ["arg"]),
            helper.make_node("Tanh", ["arg"], ["t"]),
            helper.make_node("Add", ["one", "t"], ["onep"]),
            helper.make_node("Mul", ["hx", "onep"], ["y"]),
        ],
        [
            _const("half", 0.5),
            _const("three", 3.0),
            _const("k", 0.044715),
            _const("c", math.sqrt(2 / math.pi)),
            _const("one", 1.0),
        ],
        opset=18,
    )


def _sigmoid_pattern(alpha=1.702):
    return _graph(
        [
            helper.make_node("Mul", ["alpha", "x"], ["a"]),
            helper.make_node("Sigmoid", ["a"], ["s"]),
            helper.make_node("Mul", ["x", "s"], ["y"]),
        ],
        [_const("alpha", alpha)],
        opset=18,
    )


@pytest.mark.parametrize(
    "pattern, form, op_type, approximate",
    [(_erf_pattern, "exact", "Gelu", "none"), (_tanh_pattern, "tanh", "Gelu", "tanh"),
     (_sigmoid_pattern, "sigmoid", "QuickGelu", None)],
)
def test_fusion_keeps_the_form(pattern, form, op_type, approximate):
    model = pattern()
    fused, report = fuse(model)
    assert [n.op_type for n in fused.graph.node] == [op_type]
    node = fused.graph.node[0]
    if approximate is not None:
        assert helper.get_attribute_value(node.attribute[0]).decode() == approximate
    x = np.linspace(-10, 10, 4001, dtype=np.float32)
    before, after = _run(model, x), _run(fused, x)
    np.testing.assert_allclose(after, before, atol=2e-6)
    # the fused node computes its own form, not exact GELU: a tanh->exact fusion fails here by ~4.7e-4
    np.testing.assert_allclose(after, GELU_REFERENCE[form](x), atol=2e-6)
    assert report.fused == {f"gelu_{form}": 1}


def test_silu_is_not_mistaken_for_sigmoid_gelu():
    _, report = fuse(_sigmoid_pattern(alpha=1.0))
    assert not report.fused
    assert "Sigmoid" in report.after
