"""Reading questions generated from ordinary Chinese sentences.

A sentence becomes a question by replacing one of its parts with the question word that asks for it,
in place (Chinese asks in situ: "X于1993年创立" → "X于哪一年创立？"), the removed part being the answer:

=========  ====================================  ==================
type       part of the sentence                   question words
=========  ====================================  ==================
year       ``1993年``                             哪一年 / 什么时候
date       ``8月16日``, ``1993年8月16日``          什么时候 / 哪一天
number     a count with its unit (``4个``)         多少个 / 几个 / 多少
person     a person name (jieba ``nr``)           谁
place      a place name (``ns``)                  哪里 / 什么地方
org        an organisation (``nt``)               哪个机构
thing      a noun or technical term (``n``…)      什么 / 哪个 / 哪种
define     ``X是Y`` at the start of a sentence     什么是X / X是什么
reason     ``因为/由于 X，Y``                      为什么Y
=========  ====================================  ==================

The rest of the sentence is cropped to the clauses around the blank and paraphrased (synonyms, a
dropped leading clause, a polite prefix), so a reader must match meaning, not copy a template.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

MAX_ANSWER = 30
MAX_QUESTION = 64
NUMBER = r"(?:\d+(?:\.\d+)?|[一二两三四五六七八九十百千万]+)"
UNITS = "个种次位名人本条项台块张件篇章回岁年天小时分钟秒米公里千米厘米毫米吨公斤千克克元美元倍层行列部首句字份家所座只匹头斤里丈尺寸"
MEASURES = "%％"
YEAR = re.compile(r"(?<![\d])(\d{4})年(?!\d*月)")
DATE = re.compile(r"(?<![\d])(?:\d{4}年)?\d{1,2}月\d{1,2}日")
COUNT = re.compile(rf"(?<![\d.A-Za-z])({NUMBER})([{UNITS}{MEASURES}])")
DEFINE = re.compile(r"^([^，。；：,\s“”（）]{2,14}?)(是|指|即|就是|指的是)([^。；]{4,60})[。；]?$")
REASON = re.compile(r"(因为|由于)([^，。；]{2,30})[，,](?:所以|因此)?([^。；]{3,40})")
SENTENCE = re.compile(r"[^。！？；\n]+[。！？；]?")
CLAUSE = re.compile(r"[，,：:；]")
SYNONYMS = {
    "使用": "用", "可以": "能", "能够": "可以", "需要": "要", "通过": "经由", "如果": "假如", "但是": "不过",
    "以及": "和", "因此": "所以", "目前": "现在", "提供": "给出", "包含": "包括", "包括": "含有", "进行": "做",
    "显示": "列出", "安装": "装上", "运行": "执行", "执行": "运行", "修改": "更改",
    "用户": "使用者", "于是": "随后", "便": "就", "乃": "就是", "曰": "说", "言": "说", "遂": "于是", "皆": "都",
}
PREFIXES = ("", "", "", "请问", "你知道", "问：", "文中说")
THING_FLAGS = {"n", "nz", "eng", "l", "j"}
VAGUE_SUBJECTS = ("这", "那", "它", "其", "下", "以", "此", "该", "他", "她", "我", "你", "您")
STOP_THINGS = {"时候", "问题", "东西", "方法", "情况", "方面", "时间", "地方", "部分", "内容", "一些", "这些", "那些"}


@dataclass(frozen=True)
class Question:
    """A generated question: its text, its answer (a substring of the sentence) and its type."""

    text: str
    answer: str
    kind: str


def sentences(paragraph: str) -> Iterator[tuple[int, str]]:
    """(start offset, sentence) of each sentence in a paragraph."""
    for m in SENTENCE.finditer(paragraph):
        if m.group().strip():
            yield m.start(), m.group()


def _crop(sentence: str, start: int, end: int, rng: random.Random) -> tuple[str, str]:
    """The clauses around [start, end): left part and right part, without the blank itself."""
    left, right = sentence[:start], sentence[end:]
    cuts = [m.end() for m in CLAUSE.finditer(left)]
    if cuts and (rng.random() < 0.5 or len(left) > 30):
        left = left[rng.choice(cuts[-2:]):]
    m = CLAUSE.search(right)
    if m and (rng.random() < 0.6 or len(right) > 30):
        right = right[: m.start()]
    return left.lstrip(), right.rstrip("。！？；，, ")


def paraphrase(text: str, rng: random.Random, rate: float = 0.5) -> str:
    """Replace some words by synonyms: the question should not be a verbatim copy of the passage."""
    for word, other in SYNONYMS.items():
        if word in text and rng.random() < rate:
            text = text.replace(word, other, 1)
    return text


def _finish(left: str, wh: str, right: str, rng: random.Random) -> str:
    body = paraphrase(left, rng) + wh + paraphrase(right, rng)
    return rng.choice(PREFIXES) + body.strip() + rng.choice(("？", "？", "?", "呢？"))


def _valid(answer: str, sentence: str) -> bool:
    return 0 < len(answer.strip()) <= MAX_ANSWER and answer == answer.strip() and sentence.count(answer) == 1


def _pattern_questions(sentence: str, rng: random.Random) -> Iterator[Question]:
    for m in DATE.finditer(sentence):
        left, right = _crop(sentence, m.start(), m.end(), rng)
        yield Question(_finish(left, rng.choice(("什么时候", "哪一天", "何时")), right, rng), m.group(), "date")
    for m in YEAR.finditer(sentence):
        if not DATE.match(sentence, m.start()):
            left, right = _crop(sentence, m.start(), m.end(), rng)
            yield Question(_finish(left, rng.choice(("哪一年", "哪年", "什么时候")), right, rng), m.group(), "year")
    for m in COUNT.finditer(sentence):
        number, unit = m.groups()
        if unit == "年" and len(number) == 4 or number == "一":  # a year; "一个" is an article, not a count
            continue
        left, right = _crop(sentence, m.start(), m.end(), rng)
        wh = "多少" if unit in MEASURES else rng.choice(("多少", "几")) + unit
        yield Question(_finish(left, wh, right, rng), m.group(), "number")
    if m := DEFINE.match(sentence.strip()):
        subject, _, body = m.groups()
        answer = body.strip()[:MAX_ANSWER]
        if len(answer) >= 4 and not subject.startswith(VAGUE_SUBJECTS):
            text = rng.choice((f"什么是{subject}？", f"{subject}是什么？", f"{subject}指的是什么？", f"请解释{subject}。"))
            yield Question(rng.choice(PREFIXES[:4]) + text, answer, "define")
    if m := REASON.search(sentence):
        reason, effect = m.group(2).strip(), m.group(3).strip("。 ")
        yield Question(_finish("为什么", "", effect, rng), reason, "reason")


def _word_questions(words: list[tuple[str, str]], sentence: str, rng: random.Random) -> Iterator[Question]:
    offset = 0
    for word, flag in words:
        start, offset = offset, offset + len(word)
        if len(word) < 2 or not word.strip() or word in STOP_THINGS:
            continue
        if flag.startswith("nr"):
            kind, wh = "person", "谁"
        elif flag == "ns":
            kind, wh = "place", rng.choice(("哪里", "什么地方", "何处"))
        elif flag == "nt":
            kind, wh = "org", rng.choice(("哪个机构", "哪个组织", "什么机构"))
        elif flag in THING_FLAGS:
            kind, wh = "thing", rng.choice(("什么", "什么", "哪个", "哪种"))
        else:
            continue
        left, right = _crop(sentence, start, offset, rng)
        if len(left) + len(right) >= 4:
            yield Question(_finish(left, wh, right, rng), word, kind)


def questions(sentence: str, words: list[tuple[str, str]], rng: random.Random, things: int = 1) -> list[Question]:
    """The questions the sentence supports (words: its jieba.posseg segmentation as (word, flag)).

    Every pattern question is kept and at most `things` "thing" questions, which almost any sentence offers.
    """
    found = [q for q in [*_pattern_questions(sentence, rng), *_word_questions(words, sentence, rng)]
             if _valid(q.answer, sentence) and q.answer not in q.text and len(q.text) <= MAX_QUESTION]
    nouns = [q for q in found if q.kind == "thing"]
    return [q for q in found if q.kind != "thing"] + rng.sample(nouns, min(things, len(nouns)))
