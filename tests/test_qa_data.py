"""QA training data: generated question types, calibration and the pair sampling of train_dgcnn."""

from __future__ import annotations

import random

import numpy as np
import pytest

from edgeinfer.export.qa_questions import questions

SENTENCE = "Debian 项目于1993年8月16日由伊恩·默多克在美国创立，目前共有3个稳定版本。"
WORDS = [("Debian", "eng"), (" ", "x"), ("项目", "n"), ("于", "p"), ("1993", "m"), ("年", "m"), ("8", "m"),
         ("月", "m"), ("16", "m"), ("日", "m"), ("由", "p"), ("伊恩", "nr"), ("·", "x"), ("默多克", "nr"),
         ("在", "p"), ("美国", "ns"), ("创立", "v"), ("，", "x"), ("目前", "t"), ("共有", "v"), ("3", "m"),
         ("个", "q"), ("稳定", "a"), ("版本", "n"), ("。", "x")]


def test_every_question_type_of_a_sentence() -> None:
    generated = questions(SENTENCE, WORDS, random.Random(0), things=0)
    assert {(q.kind, q.answer) for q in generated} == {
        ("date", "1993年8月16日"), ("number", "3个"), ("person", "伊恩"), ("person", "默多克"), ("place", "美国")}
    found = {q.kind: q for q in generated}
    for q in generated:
        assert q.answer in SENTENCE and q.answer not in q.text and q.text.endswith(("？", "?"))
    assert any(w in found["date"].text for w in ("什么时候", "哪一天", "何时"))
    assert any(w in found["place"].text for w in ("哪里", "什么地方", "何处"))


def test_definition_reason_and_year() -> None:
    rng = random.Random(1)
    define = [q for q in questions("软件包是一个包含程序文件和元数据的归档文件。", [], rng) if q.kind == "define"]
    assert [q.answer for q in define] == ["一个包含程序文件和元数据的归档文件"]
    assert "软件包" in define[0].text
    reason = [q for q in questions("由于内核太旧，系统无法启动新的硬件。", [], rng) if q.kind == "reason"]
    assert [q.answer for q in reason] == ["内核太旧"] and reason[0].text.startswith(("为什么", "请问为什么", "你知道为什么", "问：为什么", "文中说为什么"))
    years = [q for q in questions("该版本于2005年发布。", [], rng) if q.kind == "year"]
    assert [q.answer for q in years] == ["2005年"]


def test_vague_subjects_make_no_definition() -> None:
    assert not [q for q in questions("这是一个很长的例子句子而已。", [], random.Random(2)) if q.kind == "define"]


torch = pytest.importorskip("torch")
from edgeinfer.export.train_dgcnn import Pairs, calibrate, epoch_rows, scores


def _pairs() -> Pairs:
    # question 0: passages 0 (answer) and 1, 2; question 1: passages 3, 4 and no answer
    spans = np.full((5, 4, 2), -1)
    spans[0, 0] = 2, 3
    return Pairs(np.zeros(5, int), np.arange(5), spans, np.array([0, 0, 0, 1, 1]))


def test_epoch_rows_take_the_answer_and_some_negatives() -> None:
    pairs = _pairs()
    for seed in range(5):
        rows = epoch_rows(pairs, 1, np.random.default_rng(seed))
        assert 0 in rows and len(rows) == 3
        assert sum(r in (1, 2) for r in rows) == 1 and sum(r in (3, 4) for r in rows) == 1


def test_calibrated_threshold_separates_answers_from_null() -> None:
    examples = [{"answer": "甲"}, {"answer": "乙"}, {"answer": ""}, {"answer": ""}]
    predictions = [("甲", 0.9), ("乙", 0.6), ("丙", 0.3), ("丁", 0.1)]
    threshold = calibrate(examples, predictions)
    assert 0.3 < threshold <= 0.6
    assert scores(examples, predictions, threshold) == {
        "em": 1.0, "f1": 1.0, "score": 1.0, "no_answer_acc": 1.0, "answerable": 2, "unanswerable": 2}
    assert scores(examples, predictions, 0.0)["no_answer_acc"] == 0.0
