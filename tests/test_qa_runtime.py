"""Extractive QA runtime: span decoding, windows, voting, input checks, the shipped DGCNN bundle, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgeinfer import InputError
from edgeinfer.cli import main
from edgeinfer.loader import BUNDLES
from edgeinfer.qa import best_span, top_spans, vote_totals
from edgeinfer.qa.inputs import clean
from edgeinfer.qa.windows import buckets, windows

# five dev-set questions (data/qa/dev.jsonl) the shipped reader answers correctly
DEV = [
    ("「开宗明义」出自哪部典籍？", ["万众一心，《后汉书·朱擕传》万人一心，犹不可当，况十万乎！”", "开宗明义（kāi zōng míng yì）：开宗阐发宗旨；明义说明意思。指说话、写文章一开始就讲明主要意思。", "开宗明义，《孝经·开宗明义》开宗明义章第一。”宋·邢昺题解开，张也；宗，本也；明，显也；义，理也。言此章开张一经之宗本，显明五孝之义理，故曰开宗明义章也。”"], "孝经·开宗明义"),
    ("「指树为姓」典出哪位作者的《神仙传·老子》？", ["指树为姓（zhǐ shù wéi xìng）：道教传说，老子生于李树下，因以李为姓。", "植发冲冠，三国·魏·嵇康《养生论》壮士之怒，赫然殊观，植发冲冠。”", "反覆无常，《三国演义》第三三回操曰‘袁谭小子，反覆无常，吾难准信。’”", "指树为姓，见晋·葛洪《神仙传·老子》。"], "葛洪"),
    ("「床前明月光」是谁写的？", ["床前明月光，疑是地上霜。举头望明月，低头思故乡。——李白《夜思》", "山不在高，有仙则名。水不在深，有龙则灵。——刘禹锡《陋室铭》", "路漫漫其修远兮，吾将上下而求索。——屈原《离骚》", "归志宁无五亩园，读书本意在元元。——陆游《读书》"], "李白"),
    ("「在这可诅咒的地方击退了可诅咒的时代」出自哪部作品？", ["孺悲欲见孔子，孔子辞以疾。将命者出户，取瑟而歌。使之闻之。——《论语》", "世上如果还有真要活下去的人们，就先该敢说，敢笑，敢哭，敢怒，敢骂，敢打，在这可诅咒的地方击退了可诅咒的时代！——鲁迅《忽然想到五》", "季路问事鬼神。子曰：“未能事人，焉能事鬼？”敢问死。曰：“未知生，焉知死？”——《论语》"], "忽然想到五"),
]
SANGUO_Q = "愿借纸笔作一书，留达令兄，以表谁殷勤之意。”"
SANGUO = "生熟谙韬略，日看兵书，可得闻乎？”均曰：“不知。”张飞曰：“问他则甚！风雪甚紧，不如早归。”玄德叱止之。均曰：“家兄不在，不敢久留车骑；容日却来回礼。”玄德曰：“岂敢望先生枉驾。数日之后，备当再至。愿借纸笔作一书，留达令兄，以表刘备殷勤之意。”均遂进文房四宝。玄德呵开冻笔，拂展云笺，写书曰：“备久慕高名，两次晋谒，不遇空回，惆怅何似！窃念备汉朝苗裔，滥叨名爵，伏睹朝廷陵替，纲纪崩摧，群雄乱国，恶党"
SANGUO_ANSWER = (114, 116)  # 刘备


# ---------------------------------------------------------------- numpy parts
def _brute_force(start, end, n, max_len, combine):
    spans = [(i, j + 1, start[i] * end[j] if combine == "product" else start[i] + end[j])
             for i in range(n) for j in range(i, min(n, i + max_len))]
    return sorted(spans, key=lambda s: -s[2])


@pytest.mark.parametrize("combine", ["product", "sum"])
def test_top_spans_match_brute_force(combine: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        batch, width = rng.integers(1, 5), rng.integers(1, 40)
        lengths = rng.integers(1, width + 1, size=batch)
        start, end = rng.random((batch, width)), rng.random((batch, width))
        if combine == "sum":
            start, end = np.log(start), rng.normal(size=(batch, width))
        valid = np.arange(width)[None, :] < lengths[:, None]
        max_len, top_k = int(rng.integers(1, 12)), int(rng.integers(1, 6))
        got = top_spans(start, end, valid, max_len=max_len, top_k=top_k, combine=combine)
        for b in range(batch):
            want = _brute_force(start[b], end[b], lengths[b], max_len, combine)[:top_k]
            assert [s[:2] for s in got[b]] == [s[:2] for s in want]
            np.testing.assert_allclose([s[2] for s in got[b]], [s[2] for s in want])


def test_top_spans_threshold_and_seed_best_span() -> None:
    start, end = np.array([0.1, 0.9, 0.2]), np.array([0.1, 0.3, 0.8])
    assert best_span(start, end, max_len=5) == (1, 3, pytest.approx(0.72))
    assert best_span(start, end, max_len=1) == (1, 2, pytest.approx(0.27))
    assert top_spans(start, end, max_len=5, top_k=3, threshold=0.5) == [[(1, 3, pytest.approx(0.72))]]
    assert top_spans(np.zeros((2, 0)), np.zeros((2, 0)), max_len=3) == [[], []]


def test_vote_totals() -> None:
    totals = vote_totals({"丙丁": [0.64, 0.64], "己庚": [0.7225]})
    assert totals["丙丁"] == pytest.approx(2 * 0.64**2 / (1 + 2 * 0.64))
    assert totals["己庚"] == pytest.approx(0.7225**2 / 1.7225)
    assert totals["丙丁"] > totals["己庚"]  # found twice beats found once a little more surely


@pytest.mark.parametrize("length,size,stride", [(1, 5, 2), (5, 5, 2), (6, 5, 2), (400, 200, 64), (1000, 37, 10)])
def test_windows_cover_every_short_span(length: int, size: int, stride: int) -> None:
    spans = windows(length, size, stride)
    assert spans[0][0] == 0 and spans[-1][1] == length and all(b - a <= size for a, b in spans)
    for i in range(length):
        for j in range(i + 1, min(length, i + stride + 1) + 1):
            assert any(a <= i and j <= b for a, b in spans), (i, j)


def test_buckets_group_similar_lengths() -> None:
    items = [5, 90, 7, 88, 6, 91]
    assert buckets(items, lambda n: (n,), 3) == [[5, 6, 7], [88, 90, 91]]


def test_buckets_cap_tokens_by_the_longest_member() -> None:
    items = [90, 5, 7, 88, 6, 91, 200]
    # 3 x 7 = 21 <= 21 but 4 x 88 = 352 > 300; a 200-unit item over any small budget still gets a batch alone
    assert buckets(items, lambda n: (n,), 8, max_tokens=21) == [[5, 6, 7], [88], [90], [91], [200]]
    assert buckets(items, lambda n: (n,), 8, max_tokens=300) == [[5, 6, 7], [88, 90, 91], [200]]
    assert buckets(items, lambda n: (n,), 2, max_tokens=10**6) == [[5, 6], [7, 88], [90, 91], [200]]


def test_clean_keeps_offsets() -> None:
    assert clean("a\x00b\u200bc\td") == "a b c d"


# ---------------------------------------------------------------- the shipped readers: BERT (default) and DGCNN
@pytest.fixture(scope="module", params=["qa", "qa-dgcnn"])
def reader(request):
    import edgeinfer

    if not (BUNDLES / request.param / "manifest.json").is_file():
        pytest.skip(f"no shipped {request.param} bundle")
    return edgeinfer.load(BUNDLES / request.param, device="cpu", threads=1)


def test_dev_questions_answered_in_one_batch(reader) -> None:
    answers = reader.answer([q for q, _, _ in DEV], passages=[p for _, p, _ in DEV], batch_size=4)
    for (_, passages, gold), found in zip(DEV, answers, strict=True):
        best = found[0]
        assert best.text == gold
        assert passages[best.passage][best.start : best.end] == gold
        assert 0 < best.score <= best.span_score <= 1


def test_answer_crossing_a_window_edge(reader) -> None:
    start, end = SANGUO_ANSWER
    # windows [0, 115) and [85, 200): the answer straddles the first window's edge, lies inside the second
    assert windows(len(SANGUO), 115, 30) == [(0, 115), (85, 200)]
    best = reader.answer([SANGUO_Q], context=[SANGUO], window=115, stride=30)[0][0]
    assert (best.text, best.start, best.end) == ("刘备", start, end)


def test_context_longer_than_any_window(reader) -> None:
    filler = "".join(p for _, passages, _ in DEV[:3] for p in passages[:2])
    context = filler * 3 + SANGUO + filler * 3
    best = reader.answer([SANGUO_Q], context=[context])[0][0]
    offset = len(filler) * 3
    assert (best.text, best.start - offset, best.end - offset) == ("刘备", *SANGUO_ANSWER)


def test_top_k_threshold_and_odd_text(reader) -> None:
    found = reader.answer([DEV[2][0]], passages=[DEV[2][1]], top_k=3)[0]
    assert 1 <= len(found) <= 3 and len({a.text for a in found}) == len(found)
    assert [a.score for a in found] == sorted((a.score for a in found), reverse=True)
    assert reader.answer([DEV[2][0]], passages=[DEV[2][1]], threshold=1.01) == [[]]
    english = reader.answer(["Who wrote it?"], context=["The poem was written by Li Bai in 726."])[0]
    assert all(isinstance(a.text, str) for a in english)
    noisy = SANGUO.replace("均曰", "均\x00\x1b曰")
    best = reader.answer([SANGUO_Q + "\x07"], context=[noisy])[0][0]
    assert noisy[best.start : best.end] == best.text == "刘备"


def test_no_answer_when_the_passages_do_not_hold_it(reader, request) -> None:
    best = reader.answer(["谁写了三国演义"], passages=[["罗贯中写了三国演义。", "水浒传的作者是施耐庵。"]])[0][0]
    assert (best.text, best.passage) == ("罗贯中", 0) and best.span_score >= reader.defaults["threshold"]
    if reader.defaults["unit"] == "token":
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "a known miss of the shipped BERT reader: asked who wrote 三国演义 over one sentence about 水浒传's author, "
            "it answers 水浒传 (span probability 0.32, over its dev-calibrated threshold 0.28)")))
    poem = "床前明月光，疑是地上霜。举头望明月，低头思故乡。——李白《夜思》"
    found = reader.answer(["Debian 项目是哪一年创立的？", "谁写了三国演义"], passages=[[poem], ["水浒传的作者是施耐庵。"]])
    assert found == [[], []]


@pytest.mark.parametrize(
    "args,message",
    [
        (([""],), "question 0 is empty"),
        ((["\x00 \t"],), "question 0 is empty"),
        (("谁？",), "questions must be a list"),
        (([3],), "question 0 must be a str"),
        (([],), "questions is empty"),
    ],
)
def test_bad_questions(reader, args, message: str) -> None:
    with pytest.raises(InputError, match=message):
        reader.answer(*args, context=["文本"] * max(1, len(args[0]) if isinstance(args[0], list) else 1))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"context": [""]}, "context 0 is empty"),
        ({"context": ["甲", "乙"]}, "1 questions but 2 context"),
        ({"passages": [[]]}, "passages\\[0\\] is empty"),
        ({"passages": [["甲", None]]}, "passage 1 of question 0 must be a str"),
        ({}, "exactly one of passages"),
        ({"context": ["甲"], "passages": [["甲"]]}, "exactly one of passages"),
        ({"context": ["甲"], "top_k": 0}, "top_k must be a positive int"),
        ({"context": ["甲"], "window": 10, "stride": 10}, "stride must be an int in"),
        ({"context": ["甲"], "threshold": "high"}, "threshold must be a number"),
    ],
)
def test_bad_texts_and_options(reader, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        reader.answer(["谁？"], **kwargs)


# ---------------------------------------------------------------- CLI
def test_cli_question_json(reader, capsys) -> None:
    assert main(["qa", "--json", "--question", SANGUO_Q, "--context", SANGUO]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["answers"][0]["text"] == result["answer"]["text"] == "刘备"
    assert main(["qa", "--json", "--question", "谁？", "--context", ""]) == 2
    assert "is empty" in json.loads(capsys.readouterr().out)["error"]


def test_cli_says_when_there_is_no_answer(reader, capsys) -> None:
    assert main(["qa", "--json", "--question", SANGUO_Q, "--context", SANGUO, "--threshold", "1.01"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["answer"] is None and result["answers"] == []
    assert main(["qa", "--question", SANGUO_Q, "--context", SANGUO, "--threshold", "1.01"]) == 0
    assert capsys.readouterr().out.strip() == "(no answer: no span of the context reached the threshold 1.01)"


def test_cli_jsonl_round_trip(reader, tmp_path, capsys) -> None:
    lines = [json.dumps({"question": q, "passages": p}, ensure_ascii=False) for q, p, _ in DEV[:2]]
    lines += ["not json", json.dumps({"question": SANGUO_Q, "context": SANGUO}, ensure_ascii=False), "[1, 2]"]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["qa", "--jsonl", str(path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["answers"][0]["text"] for r in rows[:2]] == [gold for _, _, gold in DEV[:2]]
    assert rows[2]["line"] == 3 and "not JSON" in rows[2]["error"]
    assert rows[3]["answers"][0]["text"] == "刘备"
    assert rows[4]["kind"] == "InputError"


def test_runtime_imports_no_torch() -> None:
    code = "import sys, edgeinfer, edgeinfer.qa, edgeinfer.commands.qa; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
