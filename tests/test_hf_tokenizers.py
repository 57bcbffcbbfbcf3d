"""Checkpoints that ship only a slow tokenizer's files (a sentencepiece tokenizer.model, vocab.json + merges.txt,
vocab.txt) export with a tokenizer.json that tokenizes as transformers' fast tokenizer of the same folder does."""

from __future__ import annotations

import io
import json

import pytest
from conftest import CHINESE, byte_level_tokenizer, tiny_gpt2, wordpiece_tokenizer

import edgeinfer
from edgeinfer.cli import main

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = ["hello world, the quick brown fox", CHINESE, "line 42 我们喜欢明月光 𝄞 é", "  two  spaces\nand a newline", ""]


def _theirs(folder):
    return transformers.AutoTokenizer.from_pretrained(folder, use_fast=True)


def _same_ids(bundle_tokenizer, reference) -> None:
    for text in TEXTS:
        assert bundle_tokenizer.encode(text, add_special_tokens=False).ids == \
            reference(text, add_special_tokens=False)["input_ids"], text


def test_a_llama_with_a_sentencepiece_model_only(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from test_llama_export import tiny_llama

    folder = tmp_path / "hf"
    folder.mkdir()
    model = io.BytesIO()
    lines = [*TEXTS[:3]] * 20 + [f"line {i} {CHINESE[i % 20:]}" for i in range(100)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=400,
                                   model_type="bpe", character_coverage=1.0, byte_fallback=True, minloglevel=2,
                                   unk_id=0, bos_id=1, eos_id=2)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    tiny_llama("llama", vocab_size=400).save_pretrained(folder)
    assert not (folder / "tokenizer.json").exists()
    assert main(["export", "--from-hf", str(folder), "--out", str(tmp_path / "b")]) == 0
    bundle = edgeinfer.load(tmp_path / "b", device="cpu")
    _same_ids(bundle.tokenizer, _theirs(folder))
    assert bundle.decode(bundle.encode(CHINESE)) == CHINESE


def test_a_gpt2_with_vocab_and_merges_only(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    tokenizer = byte_level_tokenizer()
    tokenizer.model.save(str(folder))  # vocab.json and merges.txt
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    tiny_gpt2(seed=7, vocab_size=len(_theirs(folder))).save_pretrained(folder)  # transformers adds <|endoftext|>
    assert main(["export", "--from-hf", str(folder), "--out", str(tmp_path / "b")]) == 0
    bundle = edgeinfer.load(tmp_path / "b", device="cpu")
    _same_ids(bundle.tokenizer, _theirs(folder))
    for text in TEXTS:  # and as the tokenizer the files came from
        assert bundle.encode(text) == tokenizer.encode(text).ids


def test_a_bert_reader_with_vocab_txt_only(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    vocab = wordpiece_tokenizer().get_vocab()
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in sorted(vocab, key=vocab.get)))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                              "do_lower_case": True}))
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertForQuestionAnswering(config).eval().save_pretrained(folder)
    assert main(["export", "--from-hf", str(folder), "--task", "qa", "--out", str(tmp_path / "b")]) == 0
    reader = edgeinfer.load(tmp_path / "b", device="cpu")
    _same_ids(reader.features.tokenizer, _theirs(folder))


def test_a_broken_tokenizer_config_is_refused_by_name(tmp_path, capsys):
    folder = tmp_path / "hf"
    tiny_gpt2().save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text("{")
    assert main(["export", "--from-hf", str(folder), "--out", str(tmp_path / "b")]) == 2
    assert "tokenizer_config.json is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
