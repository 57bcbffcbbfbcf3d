"""Fine-tuning a pretrained BERT as a QA reader: training windows and targets are the runtime's, and the served
span probabilities (normalised against [CLS], `qa.null_token`) are the fine-tuned model's."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("jieba")

import edgeinfer
from edgeinfer.export import mlm_data, train_bert_qa, train_mlm
from edgeinfer.export.bert import export_bert_qa_bundle, reader_layout
from edgeinfer.export.train_mlm import CLS, PAD

CORPUS = ["刘备与关羽、张飞桃园结义。", "诸葛亮住在隆中，刘备三顾茅庐。", "曹操在赤壁被孙权和刘备打败。"] * 3
QUESTION = "刘备去了哪里三次？"
PASSAGE = "曹操在赤壁被孙权和刘备打败。刘备与关羽、张飞桃园结义。诸葛亮住在隆中，刘备三顾茅庐。"
ANSWER = "隆中"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny pretrained BERT saved as train_mlm saves it, fine-tuned for a few steps and exported with null_token."""
    work = tmp_path_factory.mktemp("bert-qa")
    tokenizer = mlm_data.train_tokenizer(CORPUS, 100)
    tokenizer.save(str(work / "tokenizer.json"))
    torch.manual_seed(0)
    mlm = train_mlm.new_model(tokenizer.get_vocab_size(), 32, hidden=32, layers=2, heads=4, intermediate=40)
    train_mlm.save(mlm, {}, work)
    model = train_bert_qa.reader_from_mlm(work)
    start = PASSAGE.index(ANSWER)
    example = {"question": QUESTION, "answer": ANSWER, "kind": "reading",
               "passages": [{"text": PASSAGE, "answers": [[start, start + len(ANSWER)]]}]}
    layout = reader_layout(model.cfg)
    windows = train_bert_qa.build_windows([example], tokenizer, layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(5):
        loss = train_bert_qa.qa_loss(model, train_bert_qa.batch_tensors(windows, np.arange(len(windows.ids)), 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    train_mlm.to_transformers(model).save_pretrained(work / "checkpoint")
    (work / "checkpoint" / "tokenizer.json").write_bytes((work / "tokenizer.json").read_bytes())
    export_bert_qa_bundle(work / "checkpoint", work / "bundle", max_seq_len=layout["window"], null_token=True,
                          threshold=0.0)
    return model, tokenizer, layout, windows, work / "bundle"


def test_token_span_covers_the_characters() -> None:
    offsets = [(0, 1), (1, 2), (2, 4), (4, 5)]
    assert train_bert_qa.token_span(offsets, 1, 3) == (1, 2)
    assert train_bert_qa.token_span(offsets, 4, 5) == (3, 3)
    assert train_bert_qa.token_span(offsets, 5, 6) is None


def test_windows_point_at_the_answer_or_at_cls(trained) -> None:
    _, tokenizer, layout, windows, _ = trained
    assert len(windows.ids) >= 2 and layout["window"] == 32  # the passage needs several windows
    answered = windows.answered
    assert answered.any() and not answered.all()
    for row, start, end in zip(windows.ids, windows.start, windows.end, strict=True):
        assert row[0] == CLS
        if start:
            assert tokenizer.decode(row[start : end + 1].tolist()).replace(" ", "") == ANSWER
        else:
            assert end == 0


def test_training_windows_are_the_runtime_windows(trained) -> None:
    _, _, layout, windows, bundle = trained
    reader = edgeinfer.load(bundle, device="cpu", threads=1)
    assert reader.defaults["window"] == layout["window"] and reader.defaults["stride"] == layout["stride"]
    rows = reader._windows([QUESTION], [[PASSAGE]], layout["window"], layout["stride"])
    served = reader.features.feeds(rows)["input_ids"]
    trained_ids = [row[row != PAD].tolist() for row in windows.ids]
    assert [row[row != PAD].tolist() for row in served] == trained_ids


def test_served_span_probability_is_normalised_against_cls(trained) -> None:
    model, _, _, windows, bundle = trained
    batch = train_bert_qa.batch_tensors(windows, np.arange(len(windows.ids)), 1)
    with torch.no_grad():
        start, end = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    best = 0.0
    for r in range(len(windows.ids)):
        allowed = batch["allowed"][r].numpy()
        p_start = torch.softmax(start[r][batch["allowed"][r]], 0).numpy()
        p_end = torch.softmax(end[r][batch["allowed"][r]], 0).numpy()
        positions = np.flatnonzero(allowed)[1:]  # passage tokens; index 0 of the softmax is [CLS]
        for i in range(len(positions)):
            for j in range(i, min(len(positions), i + 30)):
                best = max(best, p_start[1 + i] * p_end[1 + j])
    reader = edgeinfer.load(bundle, device="cpu", threads=1)
    found = reader.answer([QUESTION], [[PASSAGE]], threshold=0.0, top_k=1)[0]
    assert found and found[0].span_score == pytest.approx(best, rel=1e-4)
    assert reader.answer([QUESTION], [[PASSAGE]], threshold=best * 1.01)[0] == []


def test_answer_sentence_is_a_short_context_with_the_answer() -> None:
    text = "曹操在赤壁被打败。诸葛亮住在隆中，刘备三顾茅庐。后来他们联合孙权。"
    start = text.index(ANSWER)
    cut = train_bert_qa.answer_sentence({"text": text, "answers": [[start, start + len(ANSWER)]]})
    assert cut["text"] == "诸葛亮住在隆中，刘备三顾茅庐。"
    (s, e), = cut["answers"]
    assert cut["text"][s:e] == ANSWER
    assert train_bert_qa.answer_sentence({"text": text, "answers": []}) is None
    assert train_bert_qa.answer_sentence({"text": "住在隆中。", "answers": [[2, 4]]}) is None  # already one sentence


def test_balanced_epochs_draw_rare_kinds_as_often_as_common_ones() -> None:
    n = 1000
    kinds = np.array(["thing"] * 900 + ["number"] * 100)
    answered = np.ones(n, dtype=np.int64)
    answered[::2] = 0  # half the windows hold no answer
    data = train_bert_qa.Windows(np.zeros((n, 4), np.int16), np.ones(n, np.int64), answered, answered, kinds)
    plain = train_bert_qa.epoch_rows(data, 1.0, np.random.default_rng(0))
    assert sorted(plain[data.answered[plain]]) == list(np.flatnonzero(data.answered))
    balanced = train_bert_qa.epoch_rows(data, 1.0, np.random.default_rng(0), balance=1.0)
    share = (kinds[balanced[data.answered[balanced]]] == "number").mean()
    assert 0.4 < share < 0.6 and (~data.answered[balanced]).sum() == data.answered.sum()
