"""The DGCNN reader's segmentation (jieba-rs through rjieba) gives exactly the words of jieba.lcut, which the
reader was trained on: CJK text, ASCII runs outside the dictionary, dictionary words with symbols."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeinfer.qa.dgcnn import _segmenter

jieba = pytest.importorskip("jieba")
pytest.importorskip("rjieba")

FORTUNES = Path("/usr/share/games/fortunes/chinese")  # Debian's fortunes-zh, a data dependency of the QA data
TEXTS = [
    "画蛇添足，出自《战国策·齐策二》，比喻做了多余的事，反而不恰当。",
    "价格上涨了3.5%，约合12.5亿元；2018-07-01 起执行。",
    "用C++和C#写的AT&T程序，c++ 也行",
    "e-mail: a.b@c.com, safe-upgrade, apt-cache 与 debian-ref",
    "ＡＢＣ全角１２３，Ｔ恤衫很好，iPhone 15 Pro Max售价9999元",
    "  空格\t制表\n换行\r\n  ",
    "",
]


@pytest.fixture(scope="module")
def lcut():
    import logging

    jieba.setLogLevel(logging.WARNING)
    return _segmenter()


@pytest.mark.parametrize("text", TEXTS)
def test_words_are_jiebas(lcut, text):
    assert lcut(text) == jieba.lcut(text)


@pytest.mark.skipif(not FORTUNES.exists(), reason="Debian's fortunes-zh is not installed")
def test_words_are_jiebas_on_fortunes(lcut):
    texts = [t for t in FORTUNES.read_text(encoding="utf-8", errors="replace").split("\n%\n") if t.strip()][:400]
    assert [lcut(t) for t in texts] == [jieba.lcut(t) for t in texts]
