"""int8 export writes uint8 weights, which no CPU's kernel saturates; bundles with signed int8 weights are refused on
an x86 CPU without VNNI and rewritten as uint8 with every number kept."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper

import edgeinfer
from edgeinfer import session as session_module
from edgeinfer.bundle import Manifest
from edgeinfer.errors import BundleError
from edgeinfer.export.quantize import main as quantize_main
from edgeinfer.export.quantize import quantize_int8, shift_int8_weights

K, N = 64, 40


def _graph(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _run(proto: onnx.ModelProto, feeds: dict) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _signed_weight(rng) -> np.ndarray:
    """Full-range int8 weights whose first pairs of rows are large together: what saturates a pmaddubsw kernel."""
    weight = rng.integers(-127, 128, (K, N)).astype(np.int8)
    weight[0:4] = np.where(rng.random((4, N)) < 0.5, 127, -127)
    return weight


@pytest.mark.parametrize("zero_point", ["absent", "per column"])
def test_unsigned_weights_compute_exactly_what_the_signed_ones_meant(zero_point) -> None:
    rng = np.random.default_rng(0)
    weight = _signed_weight(rng)
    initializers = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array(3, np.uint8), "a_zero")]
    inputs = ["a", "w", "a_zero"]
    if zero_point == "per column":
        initializers.append(numpy_helper.from_array(np.zeros(N, np.int8), "w_zero"))
        inputs.append("w_zero")
    proto = _graph([helper.make_node("MatMulInteger", inputs, ["y"])],
                   [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, K])],
                   [helper.make_tensor_value_info("y", TensorProto.INT32, [None, N])], initializers)
    assert shift_int8_weights(proto, signed=False) == 1
    types = {init.name: init.data_type for init in proto.graph.initializer}
    assert types["w"] == TensorProto.UINT8 and proto.graph.node[0].input[3]
    assert types[proto.graph.node[0].input[3]] == TensorProto.UINT8
    activations = rng.integers(0, 256, (7, K)).astype(np.uint8)
    want = (activations.astype(np.int64) - 3) @ weight.astype(np.int64)
    np.testing.assert_array_equal(_run(proto, {"a": activations}), want)

    assert shift_int8_weights(proto, signed=True) == 1  # and back: the same bytes as before
    values = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    np.testing.assert_array_equal(values["w"], weight)
    assert values["w"].dtype == np.int8 and not values[proto.graph.node[0].input[3]].any()


def test_a_weight_read_by_another_op_is_not_rewritten() -> None:
    weight = _signed_weight(np.random.default_rng(1))
    proto = _graph([helper.make_node("MatMulInteger", ["a", "w"], ["y"]), helper.make_node("Identity", ["w"], ["w2"])],
                   [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, K])],
                   [helper.make_tensor_value_info("y", TensorProto.INT32, [None, N]),
                    helper.make_tensor_value_info("w2", TensorProto.INT8, [K, N])],
                   [numpy_helper.from_array(weight, "w")])
    with pytest.raises(ValueError, match="initializer w is read by more than integer matmul weights"):
        shift_int8_weights(proto, signed=False)


def test_int8_export_writes_uint8_weights_close_to_float(tmp_path) -> None:
    rng = np.random.default_rng(2)
    weight = rng.normal(0, 0.05, (768, 256)).astype(np.float32)
    proto = _graph([helper.make_node("MatMul", ["x", "w"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 768])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 256])],
                   [numpy_helper.from_array(weight, "w")])
    onnx.save(proto, tmp_path / "fp32.onnx")
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx")
    quantized = onnx.load(tmp_path / "int8.onnx")
    integer_weights = [init for init in quantized.graph.initializer if init.data_type in (TensorProto.INT8, TensorProto.UINT8)
                       and len(init.dims) == 2]
    assert [init.data_type for init in integer_weights] == [TensorProto.UINT8]
    x = rng.normal(0, 1, (3, 768)).astype(np.float32)
    want = x @ weight
    # signed weights were off by 6.6% on a CPU without VNNI; uint8 ones by 0.8% (export/quantize.py)
    assert np.abs(_run(quantized, {"x": x}) - want).max() / np.abs(want).max() < 0.03


@pytest.fixture
def signed_bundle(gpt2_bundles, tmp_path):
    """The tiny GPT-2 bundle with its MatMuls quantized to signed int8, as int8 export wrote them before."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folder = tmp_path / "signed"
    shutil.copytree(gpt2_bundles["standard"], folder)
    _, manifest = Manifest.read(folder)
    model = folder / manifest["files"]["model"]
    quantize_dynamic(model, model, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=True)
    manifest["quantization"] = {"weights": "int8, symmetric, one scale per output channel"}
    manifest.write(folder)
    return folder


def _flags(monkeypatch, flags: str) -> None:
    monkeypatch.setattr(session_module, "_cpu_flags", lambda: f"flags\t\t: fpu sse4_1 {flags}\n")


def test_signed_int8_bundle_is_refused_without_vnni_and_unsigned_in_place(signed_bundle, gpt2_bundles, monkeypatch,
                                                                           capsys) -> None:
    _flags(monkeypatch, "avx avx2 fma")
    with pytest.raises(BundleError, match=f"signed int8 weights.*without VNNI.*quantize unsign {signed_bundle}"):
        edgeinfer.load(signed_bundle, device="cpu")
    _flags(monkeypatch, "avx avx2 avx512f avx512_vnni")
    edgeinfer.load(signed_bundle, device="cpu")  # VNNI's int8 products do not saturate

    quantize_main(["unsign", str(signed_bundle)])
    assert "9 weights rewritten as uint8" in capsys.readouterr().out  # 4 a layer and the tied head
    _, manifest = Manifest.read(signed_bundle)  # the digests were rewritten with the graph
    assert manifest["quantization"]["weights"] == "uint8, symmetric, one scale per output channel"
    _flags(monkeypatch, "avx avx2 fma")
    ids = np.random.default_rng(3).integers(0, 97, size=(2, 11))
    got = edgeinfer.load(signed_bundle, device="cpu").logits(ids)
    want = edgeinfer.load(gpt2_bundles["standard"], device="cpu").logits(ids)
    assert np.abs(got - want).max() / np.abs(want).max() < 0.05
    quantize_main(["unsign", str(signed_bundle)])
    assert "no weights to rewrite as uint8" in capsys.readouterr().out

    quantize_main(["sign", str(signed_bundle)])  # for a CPU with VNNI: refused on this one again
    _flags(monkeypatch, "avx avx2 fma")
    with pytest.raises(BundleError, match="signed int8 weights"):
        edgeinfer.load(signed_bundle, device="cpu")


def test_the_command_names_a_folder_that_is_no_bundle(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        quantize_main(["sign", str(tmp_path)])
    assert exit_info.value.code == 1
    assert f"{tmp_path}: bundle {tmp_path} has no manifest.json" in capsys.readouterr().err
