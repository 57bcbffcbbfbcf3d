"""Fusion of a foreign graph: transformers GPT-2 exported by torch at opset 18, then fused."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from conftest import tiny_gpt2

from edgeinfer.kernels.fusion import fuse

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("activation, gelu_op", [("gelu_new", "Gelu"), ("gelu", "Gelu"), ("quick_gelu", "QuickGelu")])
def test_fuse_torch_opset18_export(activation, gelu_op):
    hf = tiny_gpt2(seed=5, n_layer=2, activation_function=activation)
    hf.config.use_cache = False
    ids = torch.randint(0, 97, (2, 6))
    program = torch.onnx.export(hf, (ids,), dynamo=True, opset_version=18, verbose=False,
                                dynamic_shapes={"input_ids": {0: "batch", 1: "seq"}}, input_names=["input_ids"])
    original = program.model_proto
    fused, report = fuse(original)
    assert report.after.get("Attention") == 2 and report.after.get(gelu_op) == 2
    assert not {"Erf", "Tanh", "Softmax", "Sigmoid"} & set(report.after)
    assert sum(report.after.values()) < sum(report.before.values())

    feeds = {"input_ids": np.random.default_rng().integers(0, 97, (3, 9))}
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(run(fused), run(original), atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(run(fused), hf(torch.from_numpy(feeds["input_ids"])).logits.numpy(), atol=1e-4)
