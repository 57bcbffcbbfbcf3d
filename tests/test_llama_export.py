"""Llama-family export: tiny random LlamaForCausalLM / Qwen2ForCausalLM -> bundle -> the logits and greedy tokens
of transformers, with grouped-query attention, tied and untied heads and scaled rope."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

import edgeinfer

torch = pytest.importorskip("torch")

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12], [40]]


def tiny_llama(kind: str = "llama", kv_heads: int = 2, tied: bool = False, seed: int = 0, **overrides):
    """2 layers, hidden 64, 4 query heads (head size 16); large weights so that greedy continuations vary."""
    import transformers

    config = {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": kv_heads, "max_position_embeddings": 128,
              "tie_word_embeddings": tied, "initializer_range": 0.2, "bos_token_id": 1, "eos_token_id": 2,
              **overrides}
    classes = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[kind]
    torch.manual_seed(seed)
    return getattr(transformers, classes[1])(getattr(transformers, classes[0])(**config)).eval()


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(torch.from_numpy(ids)).logits.numpy()


def _graph(bundle):
    import onnx

    return onnx.load(str(bundle / "model.onnx")).graph


def _hf_greedy(hf, row, n):
    with torch.no_grad():
        return hf.generate(torch.tensor([row]), max_new_tokens=n, do_sample=False, pad_token_id=0)[0, len(row):].tolist()


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
YARN_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32}
CASES = {
    "llama-gqa2-untied-contrib": ("llama", 2, False, "contrib", {}),
    "llama-mha-tied-llama3rope-standard": ("llama", 4, True, "standard", {"rope_parameters": LLAMA3_ROPE}),
    "qwen2-gqa1-tied-yarn-contrib": ("qwen2", 1, True, "contrib", {"rope_parameters": YARN_ROPE}),
    "qwen2-gqa1-untied-standard": ("qwen2", 1, False, "standard", {"rope_theta": 1000.0}),
    "llama-gqa2-headdim32-unfused": ("llama", 2, True, "unfused", {"head_dim": 32}),  # heads·head_dim > hidden
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Case name -> (transformers model, bundle folder); the first case goes through a checkpoint folder."""
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    root = tmp_path_factory.mktemp("llama")
    out = {}
    for i, (name, (kind, kv_heads, tied, target, overrides)) in enumerate(CASES.items()):
        hf = tiny_llama(kind, kv_heads, tied, seed=i, **overrides)
        source = hf
        if i == 0:  # bfloat16, as checkpoints often ship, in several files and their index; two end tokens
            hf.generation_config.eos_token_id = [2, 3]
            hf.to(torch.bfloat16).save_pretrained(root / "hf", max_shard_size="40KB")
            hf = type(hf).from_pretrained(root / "hf", dtype=torch.float32).eval()
            source = root / "hf"
        export_hf_checkpoint(source, root / name, attention=target)
        out[name] = hf, root / name
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_tokens_equal_transformers(exported, case):
    _, kv_heads, tied, target, _ = CASES[case]
    hf, bundle = exported[case]
    model = edgeinfer.load(bundle, device="cpu")
    manifest = model.manifest
    assert manifest["model"]["n_kv_head"] == kv_heads and manifest["model"]["tied_lm_head"] == tied
    assert manifest["source"]["architecture"] == type(hf).__name__
    assert manifest["generation"]["stop_token_ids"] == ([2, 3] if case == "llama-gqa2-untied-contrib" else [2])
    parity = manifest["parity"]
    assert parity["prefill_max_abs_diff"] <= 1e-4 and parity["cached_step_max_abs_diff"] <= 1e-4
    assert parity["reference"] == f"transformers {type(hf).__name__}"
    # contrib: one node per layer rotates and attends, reading the packed q, k, v projection
    assert manifest["fused_ops"] == {"standard": {"Attention": 2, "RotaryEmbedding": 4, "RMSNormalization": 5},
                                     "contrib": {"GroupQueryAttention": 2, "RMSNormalization": 5},
                                     "unfused": {"RMSNormalization": 5}}[target]
    if target == "contrib":
        attention = [n for n in _graph(bundle).node if n.op_type == "GroupQueryAttention"]
        assert all(list(n.input[1:3]) == ["", ""] and n.input[9] == "position_ids" for n in attention)
        assert all({a.name: a.i for a in n.attribute}["do_rotary"] == 1 for n in attention)
    ids = np.random.default_rng(0).integers(0, 97, size=(2, 13))
    np.testing.assert_allclose(model.logits(ids), _hf_logits(hf, ids), atol=1e-4)
    for row, generation in zip(PROMPTS, model.generate(PROMPTS, max_new_tokens=10, do_sample=False), strict=True):
        assert generation.token_ids == _hf_greedy(hf, row, 10)


@pytest.mark.parametrize("case", ["llama-gqa2-untied-contrib", "qwen2-gqa1-untied-standard"])
def test_sampling_and_beam_search_run(exported, case):
    model = edgeinfer.load(exported[case][1], device="cpu")
    sampled = [g.token_ids for g in model.generate(PROMPTS, max_new_tokens=6, do_sample=True, top_k=20, seed=3)]
    assert sampled == [g.token_ids for g in model.generate(PROMPTS, max_new_tokens=6, do_sample=True, top_k=20, seed=3)]
    assert all(len(tokens) == 6 and all(0 <= t < 97 for t in tokens) for tokens in sampled)
    beams = model.generate(PROMPTS[:2], num_beams=3, max_new_tokens=6, do_sample=False)
    assert [len(g.token_ids) for g in beams] == [6, 6]


def test_int8_bundle_quantizes_every_projection(tmp_path):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    hf = tiny_llama("qwen2", kv_heads=2, tied=True, seed=9)
    manifest = export_hf_checkpoint(hf, tmp_path / "b", quantize="int8", tolerance=0.25)
    # per layer: packed qkv, o, packed gate-up, down; then the tied head
    assert manifest["op_census"]["MatMulInteger"] == 4 * 2 + 1 and "MatMul" not in manifest["op_census"]
    model = edgeinfer.load(tmp_path / "b", device="cpu")
    ids = np.random.default_rng(1).integers(0, 97, size=(2, 9))
    want, got = _hf_logits(hf, ids), model.logits(ids)
    error = np.abs(got - want).max() / np.abs(want).max()
    assert 0.001 < error <= 0.25  # close, and not secretly fp32
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 0.75  # random weights leave near-ties for int8 to flip


def test_length_dependent_rope_gelu_option_and_bfloat16_model_are_refused(tmp_path):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint
    from edgeinfer.export.onnx_export import ExportError

    dynamic = tiny_llama(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    with pytest.raises(ExportError, match="rope_type 'dynamic' is not supported .* supported: default, linear, llama3"):
        export_hf_checkpoint(dynamic, tmp_path / "b")
    with pytest.raises(ExportError, match="--gelu applies to GPT-2 checkpoints"):
        export_hf_checkpoint(tiny_llama(), tmp_path / "b", gelu="tanh")
    with pytest.raises(ExportError, match="the model is torch.bfloat16; export measures parity in float32"):
        export_hf_checkpoint(tiny_llama().to(torch.bfloat16), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def _edit_checkpoint(folder, edit):
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_missing_or_unexpected_tensor_refuses_the_export(tmp_path):
    from edgeinfer.export.hf_bundle import export_hf_checkpoint
    from edgeinfer.export.onnx_export import ExportError

    tiny_llama("qwen2").save_pretrained(tmp_path / "hf")
    _edit_checkpoint(tmp_path / "hf", lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"))
    with pytest.raises(ExportError, match=r"1 missing \(model.layers.1.self_attn.k_proj.bias\); no bundle written"):
        export_hf_checkpoint(tmp_path / "hf", tmp_path / "b")
    _edit_checkpoint(tmp_path / "hf", lambda t: t.update({"model.layers.1.self_attn.k_proj.bias": torch.zeros(32),
                                                         "model.extra.weight": torch.zeros(3)}))
    with pytest.raises(ExportError, match=r"1 unexpected \(model.extra.weight\)"):
        export_hf_checkpoint(tmp_path / "hf", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_cli_refuses_unsupported_rope_with_exit_2(tmp_path):
    from test_cli_errors import assert_refused, edgeinfer_cli

    tiny_llama().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * 8,
                                 "long_factor": [2.0] * 8, "original_max_position_embeddings": 64}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert_refused(edgeinfer_cli("export", "--from-hf", tmp_path, "--out", tmp_path / "b"),
                   "rope_type 'longrope' is not supported")


def test_query_key_mask_bundle_decodes_like_transformers(tmp_path):
    """The standard target with the (batch, seq, total) mask a tree scorer feeds."""
    from edgeinfer.export.hf_import import import_checkpoint
    from edgeinfer.export.onnx_export import export_gpt_bundle

    model, hf = import_checkpoint(tiny_llama("qwen2", seed=4), "causal-lm")
    manifest = export_gpt_bundle(model, tmp_path / "b", attention="standard", attention_mask="query_key",
                                 reference=lambda ids, types: hf(ids).logits, reference_name="transformers")
    assert manifest["parity"]["max_abs_diff"] <= 1e-4 and manifest["inputs"][2]["shape"] == ["batch", "seq", "total_len"]
    tree = edgeinfer.load(tmp_path / "b", device="cpu")
    for row, generation in zip(PROMPTS, tree.generate(PROMPTS, max_new_tokens=6, do_sample=False), strict=True):
        assert generation.token_ids == _hf_greedy(hf, row, 6)
