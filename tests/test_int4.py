"""int4 bundles (`--quantize int4`, onnxruntime MatMulNBits): every weight MatMul quantized, logits close to the
fp32 checkpoint's relative to the largest logit, greedy decoding consistent with the bundle's own logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_llama_export import PROMPTS, _hf_logits, tiny_llama
from test_qa_bert import CONTEXT, QUESTION

import edgeinfer
from edgeinfer.cli import main

torch = pytest.importorskip("torch")


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def _greedy_by_rescoring(model, row: list[int], n: int) -> list[int]:
    """Greedy continuation computed without a KV cache: the full sequence rescored for every token."""
    ids = list(row)
    for _ in range(n):
        ids.append(int(model.logits(np.array([ids]))[0, -1].argmax()))
    return ids[len(row):]


@pytest.mark.parametrize("target", ["standard", "contrib"])
def test_int4_gpt2_is_close_to_fp32_and_decodes_greedily(tmp_path, lively_gpt2, target):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    # tiny random models with large weights measure about 0.31 (int8: 0.06); trained ones far less (DEFAULT_TOLERANCE)
    manifest = export_hf_checkpoint(lively_gpt2, tmp_path / "b", attention=target, quantize="int4", tolerance=0.5)
    assert manifest["quantization"]["op"] == "com.microsoft.MatMulNBits"
    assert manifest["parity"]["tolerance_kind"].startswith("relative")
    census = manifest["op_census"]
    # qkv, proj, fc, fc_proj per layer + the tied head (its Transpose folded into an initializer, as for int8)
    assert census["MatMulNBits"] == 4 * 2 + 1 and "MatMul" not in census and "Transpose" not in census
    model = edgeinfer.load(tmp_path / "b", device="cpu")
    ids = np.random.default_rng(0).integers(0, 97, size=(2, 9))
    want, got = _hf_logits(lively_gpt2, ids), model.logits(ids)
    assert 0.001 < _relative_error(got, want) <= 0.5  # close, and not secretly fp32
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] >= 0.9  # measured 0.94-0.99
    for row, generation in zip(PROMPTS, model.generate(PROMPTS, max_new_tokens=8, do_sample=False), strict=True):
        assert generation.token_ids == _greedy_by_rescoring(model, row, 8)


def test_int4_llama_quantizes_every_projection(tmp_path):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    hf = tiny_llama("qwen2", kv_heads=2, tied=True, seed=9)
    manifest = export_hf_checkpoint(hf, tmp_path / "b", quantize="int4", tolerance=0.5)
    # per layer: packed qkv, o, packed gate-up, down; then the tied head
    assert manifest["op_census"]["MatMulNBits"] == 4 * 2 + 1 and "MatMul" not in manifest["op_census"]
    model = edgeinfer.load(tmp_path / "b", device="cpu")
    ids = np.random.default_rng(1).integers(0, 97, size=(2, 9))
    want, got = _hf_logits(hf, ids), model.logits(ids)
    assert 0.001 < _relative_error(got, want) <= 0.5
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] >= 0.9  # measured 0.94-0.99
    for row, generation in zip(PROMPTS, model.generate(PROMPTS, max_new_tokens=6, do_sample=False), strict=True):
        assert generation.token_ids == _greedy_by_rescoring(model, row, 6)


def test_int4_reader_from_the_cli(tmp_path):
    import transformers
    from conftest import wordpiece_tokenizer

    tok = wordpiece_tokenizer()
    config = transformers.BertConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=64, hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    torch.manual_seed(0)
    hf = transformers.BertForQuestionAnswering(config).eval()
    hf.save_pretrained(tmp_path / "ckpt")
    tok.save(str(tmp_path / "ckpt" / "tokenizer.json"))
    assert main(["export", "--from-hf", str(tmp_path / "ckpt"), "--task", "qa", "--out", str(tmp_path / "b"),
                 "--quantize", "int4", "--tolerance", "0.5"]) == 0  # tiny random logits: see test_gpt_export
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["quantization"]["weights"].startswith("uint4")
    # q, k, v, out, fc, fc_out per layer + the QA head
    assert manifest["op_census"]["MatMulNBits"] == 6 * 2 + 1 and "MatMul" not in manifest["op_census"]
    [[answer, *_]] = edgeinfer.load(tmp_path / "b", device="cpu", threads=1).answer([QUESTION], context=[CONTEXT])
    assert answer.text == CONTEXT[answer.start:answer.end] and answer.text


def test_int4_parity_gate_is_relative(tmp_path, hf_gpt2):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint
    from edgeinfer.export.onnx_export import ParityError

    with pytest.raises(ParityError, match=r"relative to max \|reference logit\| error .* over the tolerance 1e-06"):
        export_hf_checkpoint(hf_gpt2, tmp_path / "b", quantize="int4", tolerance=1e-6)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("rows, block", [([64, 768], 32), ([768, 3072], 128)])
def test_int4_blocks_are_wide_only_for_wide_weights(rows, block):
    from onnx import TensorProto, helper, numpy_helper

    from edgeinfer.export.quantize import int4_block_for

    nodes, weights, width = [], [], rows[0]
    for i, k in enumerate(rows):
        nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"x{i + 1}"]))
        weights.append(numpy_helper.from_array(np.zeros((k, rows[(i + 1) % len(rows)]), np.float32), f"w{i}"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, width])],
                              [helper.make_tensor_value_info(f"x{len(rows)}", TensorProto.FLOAT, None)], weights)
    assert int4_block_for(helper.make_model(graph)) == block
