"""BERT readers: Hugging Face import, export with fused ops, parity with transformers, runtime answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import wordpiece_tokenizer

import edgeinfer
from edgeinfer.cli import main
from edgeinfer.errors import InputError

CONFIGS = {
    "gelu-2x4": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37},
    "tanh-1x3": {"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 3, "intermediate_size": 40,
                 "hidden_act": "gelu_new"},
}
QUESTION = "Who wrote the poem?"
CONTEXT = "The poem was written by Li Bai in the year 726. 床前明月光, the moon light before bed."


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def exported(request, tmp_path_factory):
    """(transformers model, checkpoint folder, bundle folder) for each tiny random config, exported by the CLI."""
    root = tmp_path_factory.mktemp(request.param)
    tok = wordpiece_tokenizer()
    config = transformers.BertConfig(vocab_size=tok.get_vocab_size(), max_position_embeddings=64, **CONFIGS[request.param])
    torch.manual_seed(0)
    model = transformers.BertForQuestionAnswering(config).eval()
    model.save_pretrained(root / "ckpt")
    tok.save(str(root / "ckpt" / "tokenizer.json"))
    assert main(["export", "--from-hf", str(root / "ckpt"), "--task", "qa", "--out", str(root / "bundle")]) == 0
    return model, root / "ckpt", root / "bundle"


def test_manifest_parity_and_census(exported) -> None:
    model, _, bundle = exported
    manifest = json.loads((bundle / "manifest.json").read_text())
    layers = model.config.num_hidden_layers
    assert manifest["task"] == "extractive-qa" and manifest["reader"] == "bert"
    assert manifest["parity"]["max_abs_diff"] <= 1e-4
    assert manifest["attention"] == "contrib" and manifest["fused_ops"] == {"MultiHeadAttention": layers, "Gelu": layers}
    assert not {"Softmax", "Erf", "Tanh"} & set(manifest["op_census"])
    assert manifest["special_tokens"]["cls"] == 2 and manifest["special_tokens"]["sep"] == 3


def _hf_logits(model, encodings) -> tuple[np.ndarray, np.ndarray, dict]:
    width = max(len(e.ids) for e in encodings)
    feeds = {name: np.zeros((len(encodings), width), dtype=np.int64) for name in ("input_ids", "token_type_ids", "attention_mask")}
    for b, e in enumerate(encodings):
        for name, values in (("input_ids", e.ids), ("token_type_ids", e.type_ids), ("attention_mask", e.attention_mask)):
            feeds[name][b, : len(values)] = values
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return out.start_logits.numpy(), out.end_logits.numpy(), feeds


def test_bundle_logits_equal_transformers(exported) -> None:
    model, _, bundle = exported
    reader = edgeinfer.load(bundle, device="cpu", threads=1)
    tok = wordpiece_tokenizer()
    encodings = [tok.encode(QUESTION, CONTEXT), tok.encode("Who?", "Li Bai.")]
    start, end, feeds = _hf_logits(model, encodings)
    got_start, got_end = reader.session.run(["start_logits", "end_logits"], feeds)
    real = feeds["attention_mask"].astype(bool)
    assert np.max(np.abs(got_start - start)[real]) <= 1e-4
    assert np.max(np.abs(got_end - end)[real]) <= 1e-4


def test_answer_is_the_best_span_of_transformers_logits(exported) -> None:
    model, _, bundle = exported
    reader = edgeinfer.load(bundle, device="cpu", threads=1)
    max_len = 5
    found = reader.answer([QUESTION], context=[CONTEXT], max_answer_len=max_len)[0][0]
    encoding = wordpiece_tokenizer().encode(QUESTION, CONTEXT)
    start, end, _ = _hf_logits(model, [encoding])
    context = [i for i, t in enumerate(encoding.type_ids) if t == 1][:-1]  # context tokens, less the last [SEP]
    best = max(((i, j) for i in context for j in context if 0 <= j - i < max_len), key=lambda s: start[0, s[0]] + end[0, s[1]])
    offsets = encoding.offsets
    assert (found.start, found.end) == (offsets[best[0]][0], offsets[best[1]][1])
    assert found.text == CONTEXT[found.start : found.end]
    assert 0 < found.span_score <= 1


def test_long_context_windows_map_back_to_characters(exported) -> None:
    _, _, bundle = exported
    reader = edgeinfer.load(bundle, device="cpu", threads=1)
    context = " ".join([CONTEXT] * 12)  # ~300 tokens, windows of 64
    answers = reader.answer([QUESTION, "谁写"], context=[context, context], top_k=3, batch_size=4)
    for found in answers:
        assert 1 <= len(found) <= 3
        for a in found:
            assert a.text == context[a.start : a.end] and a.end > a.start


def test_token_budget_splits_calls_without_changing_answers(exported) -> None:
    _, _, bundle = exported
    reader = edgeinfer.load(bundle, device="cpu", threads=1)
    assert reader.defaults["batch_tokens"] == 2048
    context = " ".join([CONTEXT] * 12)
    calls = []
    run = reader.session.run
    reader.session.run = lambda names, feeds: calls.append(feeds["input_ids"].shape) or run(names, feeds)
    try:
        one = reader.answer([QUESTION, "谁写"], context=[context, context], top_k=3, batch_tokens=64)
        singles = list(calls)
        calls.clear()
        many = reader.answer([QUESTION, "谁写"], context=[context, context], top_k=3, batch_tokens=10**6, batch_size=64)
    finally:
        reader.session.run = run
    assert all(shape[0] == 1 for shape in singles) and len(calls) < len(singles)
    assert [[(a.text, a.start, a.end) for a in q] for q in one] == [[(a.text, a.start, a.end) for a in q] for q in many]
    with pytest.raises(InputError, match="batch_tokens"):
        reader.answer([QUESTION], context=[context], batch_tokens=0)


def test_unsupported_checkpoint_is_refused(tmp_path) -> None:
    from edgeinfer.export.bert import config_from_hf
    from edgeinfer.export.onnx_export import ExportError

    config = transformers.BertConfig(hidden_act="relu")
    with pytest.raises(ExportError, match="activation 'relu'"):
        config_from_hf(config)


def test_int8_reader_is_close_to_transformers(exported, tmp_path) -> None:
    model, checkpoint, _ = exported
    assert main(["export", "--from-hf", str(checkpoint), "--task", "qa", "--out", str(tmp_path / "b"),
                 "--quantize", "int8", "--tolerance", "0.5"]) == 0  # tiny logits: see test_gpt_export
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["quantization"]["op"].endswith("DynamicQuantizeMatMul")
    layers = model.config.num_hidden_layers  # q, k, v, out, fc, fc_out per layer + the QA head
    assert manifest["op_census"]["MatMulInteger"] == 6 * layers + 1 and "MatMul" not in manifest["op_census"]
    reader = edgeinfer.load(tmp_path / "b", device="cpu", threads=1)
    start, end, feeds = _hf_logits(model, [wordpiece_tokenizer().encode(QUESTION, CONTEXT)])
    got_start, got_end = reader.session.run(["start_logits", "end_logits"], feeds)
    error = max(np.abs(got_start - start).max(), np.abs(got_end - end).max()) / np.abs(start).max()
    assert 0.001 < error <= 0.5


def test_standard_attention_reader_equals_transformers(exported, tmp_path) -> None:
    model, checkpoint, _ = exported
    assert main(["export", "--from-hf", str(checkpoint), "--task", "qa", "--out", str(tmp_path / "b"),
                 "--attention", "standard"]) == 0
    reader = edgeinfer.load(tmp_path / "b", device="cpu", threads=1)
    assert reader.manifest["fused_ops"] == {"Attention": model.config.num_hidden_layers,
                                            "Gelu": model.config.num_hidden_layers}
    start, end, feeds = _hf_logits(model, [wordpiece_tokenizer().encode(QUESTION, CONTEXT), wordpiece_tokenizer().encode("Who?", "Li.")])
    got_start, got_end = reader.session.run(["start_logits", "end_logits"], feeds)
    real = feeds["attention_mask"].astype(bool)
    assert max(np.abs(got_start - start)[real].max(), np.abs(got_end - end)[real].max()) <= 1e-4
    assert main(["export", "--from-hf", str(checkpoint), "--task", "qa", "--out", str(tmp_path / "c"),
                 "--attention", "unfused"]) == 2
