"""DistilBERT and RoBERTa readers: the checked importers, fused export, parity with transformers, runtime answers."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import perturb_vectors, wordpiece_tokenizer

import edgeinfer
from edgeinfer.cli import main

CONTEXT = "The poem was written by Li Bai in the year 726. 床前明月光, the moon light before bed."
QUESTIONS = ["Who wrote the poem?", "谁写", "In what year was it written?"]
SIZES = {"hidden": 32, "layers": 2, "heads": 4, "intermediate": 37, "positions": 64}


def roberta_tokenizer():
    """A byte-level BPE with RoBERTa's specials (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 4) and pair layout."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CONTEXT, *QUESTIONS], trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return tok


def distilbert(sinusoidal: bool):
    tok = wordpiece_tokenizer()
    config = transformers.DistilBertConfig(
        vocab_size=tok.get_vocab_size(), dim=SIZES["hidden"], n_layers=SIZES["layers"], n_heads=SIZES["heads"],
        hidden_dim=SIZES["intermediate"], max_position_embeddings=SIZES["positions"], sinusoidal_pos_embds=sinusoidal)
    return transformers.DistilBertForQuestionAnswering(config), tok


def roberta():
    tok = roberta_tokenizer()
    config = transformers.RobertaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=SIZES["hidden"], num_hidden_layers=SIZES["layers"],
        num_attention_heads=SIZES["heads"], intermediate_size=SIZES["intermediate"], type_vocab_size=1,
        max_position_embeddings=SIZES["positions"] + 2, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return transformers.RobertaForQuestionAnswering(config), tok


MODELS = {"distilbert-sinusoidal": lambda: distilbert(True), "distilbert-learned": lambda: distilbert(False),
          "roberta": roberta}


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request, tmp_path_factory):
    """(transformers model, tokenizer, bundle folder), exported by the CLI from a saved checkpoint folder."""
    root = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    model, tok = MODELS[request.param]()
    perturb_vectors(model)
    model.eval().save_pretrained(root / "ckpt")
    tok.save(str(root / "ckpt" / "tokenizer.json"))
    assert main(["export", "--from-hf", str(root / "ckpt"), "--task", "qa", "--out", str(root / "bundle")]) == 0
    return model, tok, root / "bundle"


def _reference(model, tok, question: str, context: str, max_len: int) -> tuple[int, int]:
    """The character span transformers' logits choose: argmax of start + end over the context tokens."""
    encoding = tok.encode(question, context)
    feeds = {"input_ids": torch.tensor([encoding.ids]), "attention_mask": torch.tensor([encoding.attention_mask])}
    with torch.no_grad():
        out = model(**feeds)
    start, end = out.start_logits[0].numpy(), out.end_logits[0].numpy()
    context_tokens = [i for i, s in enumerate(encoding.sequence_ids) if s == 1]
    i, j = max(((i, j) for i in context_tokens for j in context_tokens if 0 <= j - i < max_len),
               key=lambda s: start[s[0]] + end[s[1]])
    return encoding.offsets[i][0], encoding.offsets[j][1]


def test_manifest_parity_and_fusion(exported) -> None:
    model, tok, bundle = exported
    manifest = json.loads((bundle / "manifest.json").read_text())
    layers = SIZES["layers"]
    assert manifest["source"]["architecture"] == type(model).__name__
    assert manifest["parity"]["max_abs_diff"] <= 1e-4
    assert manifest["fused_ops"] == {"MultiHeadAttention": layers, "Gelu": layers}
    assert not {"Softmax", "Erf", "Tanh"} & set(manifest["op_census"])
    assert [spec["name"] for spec in manifest["inputs"]] == ["input_ids", "attention_mask"]  # no token types
    cls, sep = tok.encode("a").ids[0], tok.encode("a").ids[-1]
    assert (manifest["special_tokens"]["cls"], manifest["special_tokens"]["sep"]) == (cls, sep)
    assert manifest["qa"]["window"] == SIZES["positions"]


def test_answers_are_the_best_spans_of_transformers_logits(exported) -> None:
    model, tok, bundle = exported
    reader = edgeinfer.load(bundle, device="cpu", threads=1)
    found = reader.answer(QUESTIONS, context=[CONTEXT] * len(QUESTIONS), max_answer_len=5)
    for question, answers in zip(QUESTIONS, found, strict=True):
        start, end = _reference(model, tok, question, CONTEXT, 5)
        assert (answers[0].start, answers[0].end) == (start, end), question
        assert answers[0].text == CONTEXT[start:end]


def test_runtime_inputs_are_the_tokenizers_pair_layout(exported) -> None:
    """<s> q </s></s> p </s> for RoBERTa, [CLS] q [SEP] p [SEP] for DistilBERT, exactly as their tokenizers pair."""
    _, tok, bundle = exported
    reader = edgeinfer.load(bundle, device="cpu", threads=1)
    calls = []
    run = reader.session.run
    reader.session.run = lambda names, feeds: calls.append(feeds) or run(names, feeds)
    reader.answer([QUESTIONS[0]], context=[CONTEXT])
    assert calls[0]["input_ids"].tolist() == [tok.encode(QUESTIONS[0], CONTEXT).ids]
    assert set(calls[0]) == {"input_ids", "attention_mask"}


def test_roberta_positions_start_past_padding_idx() -> None:
    from edgeinfer.export.bert import config_from_hf

    model, _ = roberta()
    cfg = config_from_hf(model.config)
    assert (cfg.padding_idx, cfg.max_length, cfg.token_types) == (1, SIZES["positions"], False)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_missing_or_unexpected_tensor_refuses_the_export(name, tmp_path) -> None:
    from edgeinfer.export.hf_import import IMPORTERS
    from edgeinfer.export.onnx_export import ExportError

    model, _ = MODELS[name]()
    state = model.state_dict()
    importer = IMPORTERS[type(model).__name__]
    importer(state, model.config)
    missing = {k: v for k, v in state.items() if not k.endswith("layer.1.attention.out_lin.bias")
               and not k.endswith("layer.1.attention.output.dense.bias")}
    with pytest.raises(ExportError, match="1 missing"):
        importer(missing, model.config)
    with pytest.raises(ExportError, match=r"1 unexpected \(extra.weight\)"):
        importer({**state, "extra.weight": torch.zeros(1)}, model.config)
