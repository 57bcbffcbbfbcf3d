"""GPT export: transformers GPT-2 -> bundle -> onnxruntime logits equal transformers' logits."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_gpt2

import edgeinfer

torch = pytest.importorskip("torch")


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.from_numpy(ids)).logits.numpy()


def _census(bundle):
    import onnx

    return [n.op_type for n in onnx.load(str(bundle / "model.onnx")).graph.node]


@pytest.mark.parametrize("target", ["standard", "contrib"])
def test_bundle_logits_equal_transformers(gpt2_bundles, hf_gpt2, target):
    model = edgeinfer.load(gpt2_bundles[target], device="cpu")
    ids = np.random.default_rng().integers(0, 97, size=(3, 11))
    np.testing.assert_allclose(model.logits(ids), _hf_logits(hf_gpt2, ids), atol=1e-4)
    assert model.manifest["parity"]["max_abs_diff"] < 1e-4


def test_left_padded_rows_equal_unpadded_rows(gpt2_bundles, hf_gpt2):
    model = edgeinfer.load(gpt2_bundles["standard"], device="cpu")
    ids = np.array([[5, 6, 7, 8, 9], [0, 0, 3, 4, 5]])
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    logits = model.logits(ids, attention_mask=mask)
    np.testing.assert_allclose(logits[1, 2:], _hf_logits(hf_gpt2, ids[1:, 2:])[0], atol=1e-4)


@pytest.mark.parametrize("target", ["standard", "contrib"])
def test_node_census_one_fused_node_per_layer(gpt2_bundles, target):
    ops = _census(gpt2_bundles[target])
    attention = "Attention" if target == "standard" else "GroupQueryAttention"
    assert ops.count(attention) == 2 and ops.count("Gelu") == 2
    assert not {"Erf", "Tanh", "Softmax", "Pow"} & set(ops)


def test_contrib_export_feeds_attention_the_packed_qkv(gpt2_bundles):
    """kernels/contrib_fusion.py: GroupQueryAttention reads the QKV projection whole; no Split is left."""
    import onnx

    graph = onnx.load(str(gpt2_bundles["contrib"] / "model.onnx")).graph
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    producers = {out: n.op_type for n in graph.node for out in n.output}
    assert len(attention) == 2 and all(list(n.input[1:3]) == ["", ""] for n in attention)
    assert all(producers[n.input[0]] == "Add" for n in attention)  # the projection's bias Add
    assert "Split" not in producers.values()


@pytest.mark.parametrize(
    "config",
    [
        {"n_embd": 60, "n_head": 5, "n_layer": 3, "activation_function": "gelu"},
        {"n_embd": 28, "n_head": 7, "n_layer": 1, "activation_function": "quick_gelu"},
        {"n_embd": 64, "n_head": 1, "n_layer": 2, "tie_word_embeddings": False},
        {"n_embd": 40, "n_head": 5, "n_layer": 2, "activation_function": "gelu"},
    ],
    ids=["5heads-exact", "7heads-sigmoid", "1head-untied", "5heads-dim8"],
)
@pytest.mark.parametrize("target", ["standard", "contrib"])
def test_configs_and_cached_step(tmp_path, config, target):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint
    from edgeinfer.export.onnx_export import ExportError

    hf = tiny_gpt2(seed=3, **config)
    head_dim = config["n_embd"] // config["n_head"]
    if target == "contrib" and head_dim % 8:
        with pytest.raises(ExportError, match=f"multiple of 8; this model's is {head_dim}"):
            export_hf_checkpoint(hf, tmp_path / "b", attention=target)
        return
    manifest = export_hf_checkpoint(hf, tmp_path / "b", attention=target)
    assert manifest["parity"]["cached_step_max_abs_diff"] < 1e-4
    gelu = {"gelu": "exact", "quick_gelu": "sigmoid"}.get(config.get("activation_function"), "tanh")
    assert manifest["gelu"] == gelu
    gelu_op = "QuickGelu" if gelu == "sigmoid" else "Gelu"
    assert manifest["fused_ops"][gelu_op] == config["n_layer"]

    model = edgeinfer.load(tmp_path / "b", device="cpu")
    ids = np.random.default_rng().integers(0, 97, size=(2, 9))
    np.testing.assert_allclose(model.logits(ids), _hf_logits(hf, ids), atol=1e-4)


def test_parity_failure_refuses_to_write(tmp_path, hf_gpt2):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint
    from edgeinfer.export.onnx_export import ParityError

    with pytest.raises(ParityError, match=r"over the tolerance 0.0001 by"):
        export_hf_checkpoint(hf_gpt2, tmp_path / "b", gelu="sigmoid")  # the checkpoint's GELU is tanh
    assert not (tmp_path / "b").exists()


def test_our_gpt_post_ln_segments_export(tmp_path):
    """The model options transformers' GPT-2 lacks (post-LN, segment ids) against our own eager PyTorch."""
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.onnx_export import export_gpt_bundle

    torch.manual_seed(1)
    cfg = GPTConfig(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_segments=2, pre_ln=False,
                    gelu="exact")
    model = GPT(cfg).eval()
    manifest = export_gpt_bundle(model, tmp_path / "b", task="chat")
    assert manifest["parity"]["max_abs_diff"] < 1e-4
    loaded = edgeinfer.load(tmp_path / "b", device="cpu")
    ids = np.random.default_rng().integers(0, 50, size=(2, 7))
    types = np.array([[0, 0, 0, 1, 1, 1, 0]] * 2)
    with torch.no_grad():
        ref = model.training_logits(torch.from_numpy(ids), torch.from_numpy(types)).numpy()
    np.testing.assert_allclose(loaded.logits(ids, token_type_ids=types), ref, atol=1e-4)


@pytest.mark.parametrize("target", ["standard", "contrib"])
def test_int8_bundle_quantizes_every_weight_matmul(tmp_path, hf_gpt2, target):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    # tiny random models have small logits next to their int8 error (trained ones measure about 0.06)
    manifest = export_hf_checkpoint(hf_gpt2, tmp_path / "b", attention=target, quantize="int8", tolerance=0.25)
    assert manifest["quantization"]["weights"].startswith("uint8")
    assert manifest["parity"]["tolerance_kind"].startswith("relative")
    census = manifest["op_census"]
    # 4 per layer (qkv, proj, fc, fc_proj) + the tied head, whose Transpose was folded into an initializer
    assert census["MatMulInteger"] == 4 * 2 + 1 and "MatMul" not in census and "Transpose" not in census
    model = edgeinfer.load(tmp_path / "b", device="cpu")
    ids = np.random.default_rng(0).integers(0, 97, size=(2, 9))
    want, got = _hf_logits(hf_gpt2, ids), model.logits(ids)
    error = np.abs(got - want).max() / np.abs(want).max()
    assert 0.001 < error <= 0.25  # int8 is close, and not secretly fp32
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.9


def test_int8_parity_gate_is_relative(tmp_path, hf_gpt2):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint
    from edgeinfer.export.onnx_export import ExportError, ParityError

    with pytest.raises(ParityError, match=r"relative to max \|reference logit\| error .* over the tolerance 1e-06"):
        export_hf_checkpoint(hf_gpt2, tmp_path / "b", quantize="int8", tolerance=1e-6)
    with pytest.raises(ExportError, match="unknown quantization 'int3'"):
        export_hf_checkpoint(hf_gpt2, tmp_path / "b", quantize="int3")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("activation", ["gelu_new", "gelu", "quick_gelu"])
def test_unfused_target_has_no_fused_op_and_same_tokens(tmp_path, activation):
    """The benchmark baseline: primitive ops only, yet the same logits and greedy tokens as transformers."""
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    hf = tiny_gpt2(seed=5, activation_function=activation, initializer_range=0.2)
    manifest = export_hf_checkpoint(hf, tmp_path / "b", attention="unfused")
    census = manifest["op_census"]
    assert manifest["fused_ops"] == {} and manifest["kv_cache"]["layout"] == "concat"
    assert census["Softmax"] == 2
    formula = {"gelu_new": "Tanh", "gelu": "Erf", "quick_gelu": "Sigmoid"}[activation]
    assert census[formula] == 2
    model = edgeinfer.load(tmp_path / "b", device="cpu")
    ids = np.random.default_rng(1).integers(0, 97, size=(2, 9))
    np.testing.assert_allclose(model.logits(ids), _hf_logits(hf, ids), atol=1e-4)
    prompt = [[5, 6, 7], [8, 9, 10, 11, 12]]
    got = model.generate(prompt, max_new_tokens=6, do_sample=False)
    for row, generation in zip(prompt, got, strict=True):
        with torch.no_grad():
            want = hf.generate(torch.tensor([row]), max_new_tokens=6, do_sample=False, pad_token_id=0)[0, len(row):]
        assert generation.token_ids == want.tolist()


def test_query_key_mask_bundle_decodes_like_key_mask_bundle(tmp_path, hf_gpt2, gpt2_bundles):
    from edgeinfer.export.hf_import import import_gpt2
    from edgeinfer.export.onnx_export import ExportError, export_gpt_bundle

    model = import_gpt2(hf_gpt2.state_dict(), hf_gpt2.config)
    manifest = export_gpt_bundle(model, tmp_path / "b", attention="standard", attention_mask="query_key")
    assert manifest["attention_mask"] == "query_key" and manifest["inputs"][2]["shape"] == ["batch", "seq", "total_len"]
    tree, keyed = edgeinfer.load(tmp_path / "b", device="cpu"), edgeinfer.load(gpt2_bundles["standard"], device="cpu")
    ids = np.array([[5, 6, 7, 8, 9], [0, 0, 3, 4, 5]])
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    np.testing.assert_allclose(tree.logits(ids, attention_mask=mask)[mask == 1],
                               keyed.logits(ids, attention_mask=mask)[mask == 1], atol=1e-5)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]
    assert [g.token_ids for g in tree.generate(prompts, max_new_tokens=5, do_sample=False)] == [
        g.token_ids for g in keyed.generate(prompts, max_new_tokens=5, do_sample=False)]
    with pytest.raises(ExportError, match="query_key with the standard target only"):
        export_gpt_bundle(model, tmp_path / "c", attention="contrib", attention_mask="query_key")


@pytest.mark.parametrize(("architecture", "model_type", "task", "phrases"), [
    ("GPTNeoXForCausalLM", "gpt_neox", "causal-lm", []),
    ("BertForMaskedLM", "bert", "qa", ["(export it with --task masked-lm)"]),
    ("DistilBertForMaskedLM", "distilbert", "masked-lm", []),
    ("RobertaForMaskedLM", "roberta", "masked-lm", []),
    ("DistilBertForQuestionAnswering", "distilbert", "causal-lm", ["(export it with --task qa)"]),
    ("BertForQuestionAnswering", "bert", "causal-lm", ["(export it with --task qa)"]),
])
def test_export_refuses_unsupported_architecture_before_loading(tmp_path, architecture, model_type, task, phrases):
    """Refused from config.json alone (no weights here), naming what export takes."""
    import json

    from test_cli_errors import assert_refused, edgeinfer_cli

    (tmp_path / "config.json").write_text(json.dumps({"architectures": [architecture], "model_type": model_type}))
    done = edgeinfer_cli("export", "--from-hf", tmp_path, "--task", task, "--out", tmp_path / "b")
    assert_refused(done, f"a {architecture!r} checkpoint (model_type {model_type!r}) is not exported as {task}",
                   "export takes causal-lm: GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM; qa: "
                   "BertForQuestionAnswering, DistilBertForQuestionAnswering, RobertaForQuestionAnswering; "
                   "masked-lm: BertForMaskedLM", *phrases)


def test_export_help_lists_supported_architectures():
    from test_cli_errors import edgeinfer_cli

    text = " ".join(edgeinfer_cli("export", "--help").stdout.split())
    assert ("causal-lm: GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM; qa: BertForQuestionAnswering, "
            "DistilBertForQuestionAnswering, RobertaForQuestionAnswering; masked-lm: BertForMaskedLM") in text


def test_in_memory_model_of_another_architecture_is_refused(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from edgeinfer.errors import InputError
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    neox = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                            intermediate_size=64))
    with pytest.raises(InputError, match="'GPTNeoXForCausalLM' checkpoint .* is not exported as causal-lm"):
        export_hf_checkpoint(neox, tmp_path / "b")


def test_gpt2_checkpoint_missing_a_tensor_is_refused(tmp_path, hf_gpt2):
    """transformers would load it with random numbers in place of the missing tensor, and only warn."""
    from safetensors.torch import load_file, save_file

    from edgeinfer.export.hf_bundle import export_hf_checkpoint
    from edgeinfer.export.onnx_export import ExportError

    hf_gpt2.save_pretrained(tmp_path / "hf")
    tensors = load_file(tmp_path / "hf" / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_proj.bias"]
    save_file(tensors, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ExportError, match=r"1 missing \(transformer.h.1.mlp.c_proj.bias\); no bundle written"):
        export_hf_checkpoint(tmp_path / "hf", tmp_path / "b")
    assert not (tmp_path / "b").exists()
