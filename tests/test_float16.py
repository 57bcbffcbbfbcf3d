"""float16 bundles (`--quantize float16`, for CUDA's GroupQueryAttention): the whole graph and the KV cache in half
precision, the logits in float32, close to the checkpoint's; run here on onnxruntime's CPU kernels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_int4 import _greedy_by_rescoring, _relative_error
from test_llama_export import PROMPTS, _hf_logits, tiny_llama

import edgeinfer
from edgeinfer.cli import main
from edgeinfer.errors import BundleError

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("target", ["standard", "contrib"])
def test_float16_gpt2_keeps_its_cache_in_half_precision_and_decodes_greedily(tmp_path, lively_gpt2, target):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    manifest = export_hf_checkpoint(lively_gpt2, tmp_path / "b", attention=target, quantize="float16")
    assert manifest["quantization"]["weights"] == "float16"
    assert manifest["parity"]["tolerance_kind"].startswith("relative") and manifest["parity"]["tolerance"] == 0.01
    dtypes = {spec["name"]: spec["dtype"] for spec in manifest["outputs"]}
    assert dtypes.pop("logits") == "float32" and set(dtypes.values()) == {"float16"}
    model = edgeinfer.load(tmp_path / "b", device="cpu")
    assert model.cache_dtype == np.float16
    ids = np.random.default_rng(0).integers(0, 97, size=(2, 9))
    want, got = _hf_logits(lively_gpt2, ids), model.logits(ids)
    assert got.dtype == np.float32
    assert 1e-6 < _relative_error(got, want) <= 0.01  # close, and not secretly float32
    for row, generation in zip(PROMPTS, model.generate(PROMPTS, max_new_tokens=8, do_sample=False), strict=True):
        assert generation.token_ids == _greedy_by_rescoring(model, row, 8)


def test_float16_llama_with_grouped_query_attention_and_rotary(tmp_path):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    hf = tiny_llama("llama", kv_heads=1, tied=False, seed=5)
    manifest = export_hf_checkpoint(hf, tmp_path / "b", quantize="float16")
    assert manifest["attention"] == "contrib"
    model = edgeinfer.load(tmp_path / "b", device="cpu")
    ids = np.random.default_rng(1).integers(0, 97, size=(2, 9))
    assert _relative_error(model.logits(ids), _hf_logits(hf, ids)) <= 0.01
    engine_rows = model.generate(PROMPTS, max_new_tokens=6, do_sample=False, max_active=2)  # continuous batching
    for row, generation in zip(PROMPTS, engine_rows, strict=True):
        assert generation.token_ids == _greedy_by_rescoring(model, row, 6)


def test_float16_from_the_cli(tmp_path, lively_gpt2):
    lively_gpt2.save_pretrained(tmp_path / "hf")
    assert main(["export", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "b"),
                 "--quantize", "float16"]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["quantization"]["tool"].endswith("convert_float_to_float16")


def test_a_manifest_that_misstates_the_cache_type_is_refused(tmp_path, lively_bundles):
    import shutil

    shutil.copytree(lively_bundles["contrib"], tmp_path / "b")
    path = tmp_path / "b" / "manifest.json"
    manifest = json.loads(path.read_text())
    for spec in manifest["outputs"]:
        if spec["name"].startswith("present"):
            spec["dtype"] = "float16"  # the graph's cache is float32
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="dtype 'float16', the graph 'float32'"):
        edgeinfer.load(tmp_path / "b", device="cpu", verify=False)


def test_float16_is_refused_for_encoders_before_any_work(tmp_path):
    import transformers

    from edgeinfer.export.onnx_export import ExportError

    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=20, max_position_embeddings=32)
    transformers.BertForQuestionAnswering(config).save_pretrained(tmp_path / "hf")
    from edgeinfer.export.bert import export_bert_qa_bundle

    with pytest.raises(ExportError, match="float16 is for decoders"):
        export_bert_qa_bundle(tmp_path / "hf", tmp_path / "b", quantize="float16")
    assert not (tmp_path / "b").exists()
