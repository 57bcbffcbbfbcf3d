"""Reading-comprehension examples from documents: generated questions over windows of running text.

Each question gets 3-5 passages of at most MAX_PASSAGE characters: the window holding its sentence
(placed at a random point of the window), a near-miss (the same stretch of text with the answer's
sentence cut out, so it shares the question's topic but not the answer), and windows elsewhere in the
same or another document of the source. A share of questions is made unanswerable by leaving the
answer's window out: the reader must learn to say "no answer" rather than pick the likeliest span.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

from .qa_questions import Question, questions, sentences
from .qa_sources import Document

MAX_PASSAGE = 200
UNANSWERABLE = 0.25
KIND_CAP = {"thing": 0.35, "person": 0.3}  # at most this share of a source's questions, so rarer types count


def _posseg():
    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)
    return jieba.posseg.lcut


def _window(text: str, start: int, end: int, rng: random.Random) -> tuple[int, str]:
    """A window of MAX_PASSAGE characters of text holding [start, end), at a random position in it."""
    lo, hi = max(0, end - MAX_PASSAGE), min(start, max(0, len(text) - MAX_PASSAGE))
    first = rng.randint(lo, hi) if lo <= hi else start
    return first, text[first : first + MAX_PASSAGE]


def _others(docs: list[Document], doc: int, avoid: tuple[int, int], answer: str, n: int, rng: random.Random) -> list[str]:
    """n windows without the answer: half from the same document away from `avoid`, the rest from others."""
    out: list[str] = []
    for _ in range(8 * n):
        if len(out) == n:
            break
        d = doc if rng.random() < 0.5 else rng.randrange(len(docs))
        text = docs[d].text
        first = rng.randrange(max(1, len(text) - MAX_PASSAGE // 2))
        if d == doc and avoid[0] - MAX_PASSAGE < first < avoid[1]:
            continue
        window = text[first : first + MAX_PASSAGE]
        if len(window) >= 40 and answer not in window and window not in out:
            out.append(window)
    return out


def _answers(text: str, answer: str) -> list[list[int]]:
    out, i = [], text.find(answer)
    while i >= 0:
        out.append([i, i + len(answer)])
        i = text.find(answer, i + len(answer))
    return out


def _generated(docs: list[Document], rng: random.Random, per_doc: int, things: int, passes: int) -> list[tuple[int, int, int, Question]]:
    """(document, sentence start, sentence end, question) for up to per_doc questions per document.

    Each pass words the questions anew (other crops, synonyms and question words).
    """
    cut = _posseg()
    found = []
    for d, doc in enumerate(docs):
        offset, mine = 0, []
        for paragraph in doc.paragraphs:
            for start, sentence in sentences(paragraph):
                if 8 <= len(sentence) <= 150:
                    words = [(w.word, w.flag) for w in cut(sentence)]
                    at = offset + start
                    for _ in range(passes):
                        mine += [(d, at, at + len(sentence), q) for q in questions(sentence, words, rng, things)]
            offset += len(paragraph)
        found += rng.sample(mine, min(per_doc, len(mine)))
    return _balanced(found, rng)


def _balanced(found: list[tuple[int, int, int, Question]], rng: random.Random) -> list[tuple[int, int, int, Question]]:
    counts = Counter(q.kind for *_, q in found)
    total = len(found)
    keep = {k: min(1.0, KIND_CAP[k] * total / counts[k]) for k in KIND_CAP if counts[k]}
    return [f for f in found if rng.random() < keep.get(f[3].kind, 1.0)]


def reading_examples(docs: list[Document], source: str, rng: random.Random, per_doc: int = 400, things: int = 1,
                     passes: int = 1, unanswerable: float = UNANSWERABLE) -> list[dict]:
    """Examples in qa_data's format (question, passages with answer offsets, answer; "" when unanswerable).

    per_doc caps the questions of one document; things and passes: see `questions` and `_generated`.
    """
    examples = []
    for n, (d, start, end, q) in enumerate(_generated(docs, rng, per_doc, things, passes)):
        text = docs[d].text
        if text[start:end].count(q.answer) != 1:
            continue
        first, positive = _window(text, start, end, rng)
        cut = text[:start] + text[end:]
        near = cut[max(0, first - rng.randint(0, 40)) :][:MAX_PASSAGE]
        texts = [positive] + ([near] if q.answer not in near and len(near) >= 40 else [])
        texts += _others(docs, d, (start, end), q.answer, rng.randint(3, 5) - len(texts), rng)
        if rng.random() < unanswerable and len(texts) >= 3:
            texts = texts[1:]
        rng.shuffle(texts)
        passages = [{"text": t, "answers": _answers(t, q.answer)} for t in texts]
        answered = any(p["answers"] for p in passages)
        if len(passages) >= 2:
            examples.append({"id": f"{source}:{d}:{n}", "question": q.text, "passages": passages,
                             "answer": q.answer if answered else "", "kind": q.kind})
    return examples
