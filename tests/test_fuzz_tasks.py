"""Fuzzed task APIs on the shipped bundles: `Chat`, `MoveModel` and `Reader.answer`, every argument drawn from values
a caller may pass and from junk.

Usable arguments must give results that keep their promises and, where they are determined, equal the same call
made again or on a fresh object; unusable ones must be refused with an EdgeInferError, after which the object (and
the model under it) answers exactly as before.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from fuzzing import (
    FAILING_PROCESSORS,
    PROFILES,
    decoding_values,
    fuzz,
    is_int,
    rarely,
    values,
)
from hypothesis import strategies as st

import edgeinfer
from edgeinfer.chat import Chat
from edgeinfer.errors import EdgeInferError, InputError
from edgeinfer.loader import BUNDLES
from edgeinfer.qa.inputs import clean
from edgeinfer.xiangqi import Board
from edgeinfer.xiangqi.mover import MoveModel

CHINESE = "你好世界李白是诗人床前明月光谁写的"
GREETING = "你好"
Table = dict[str, tuple[st.SearchStrategy, st.SearchStrategy]]


@dataclass
class Drawn:
    """Drawn arguments, and why they must be refused (no problems: the call must succeed)."""

    args: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def draw_args(draw, table: Table, names, drawn: Drawn, one_in: int) -> None:
    """Set each named argument to a usable value or, about one time in `one_in` (0: never), an unusable one."""
    for name in names:
        usable, unusable = table[name]
        if one_in and rarely(draw, one_in):
            drawn.args[name] = draw(unusable)
            drawn.problems.append(f"{name}={drawn.args[name]!r}")
        else:
            drawn.args[name] = draw(usable)


def some(draw, table: Table, max_size: int = 4) -> list[str]:
    return draw(st.lists(st.sampled_from(sorted(table)), unique=True, max_size=max_size))


# ---------------------------------------------------------------- Chat
@pytest.fixture(scope="module")
def chat_model():
    return edgeinfer.load(BUNDLES / "chat", device="cpu")


@st.composite
def chats(draw, model) -> tuple[Drawn, Drawn]:
    """(the arguments of Chat(...), the message): decoding options, seed and history, now and then one option of
    generate that a conversation does not take."""
    setup, message = Drawn(), Drawn()
    one_in = draw(st.sampled_from([0, 4]))  # every argument usable, or some not
    table = decoding_values(model, CHINESE) | {
        "max_new_tokens": values(st.integers(1, 6), [0, -1, 253, 2.0, "3", True]),
        "seed": values(st.one_of(st.none(), st.integers(0, 2**64)), [-1, 1.5, "1", True, np.int64(3)]),
        "history": values(st.one_of(st.none(), st.lists(st.text(CHINESE, max_size=8), max_size=3),
                                    st.just(["长" * 3000])), ["abc", [1], ["a", None], ("a",), ["\udcff"]]),
    }
    draw_args(draw, table, sorted({*some(draw, table), "seed"}), setup, one_in)  # a seed (or None) in every call
    min_new, max_new = setup.args.get("min_new_tokens", 0), setup.args.get("max_new_tokens", 32)
    if is_int(min_new) and is_int(max_new) and min_new > max_new:
        setup.problems.append("min_new_tokens > max_new_tokens")
    if one_in and rarely(draw, 8):
        name = draw(st.sampled_from(["num_beams", "num_return_sequences", "speculate", "max_active", "prefix"]))
        setup.args[name] = 2
        setup.problems.append(f"{name}, an option of generate")
    if setup.args.get("logits_processor") in FAILING_PROCESSORS:  # accepted (it is callable); every reply fails
        setup.problems.remove(f"logits_processor={setup.args['logits_processor']!r}")
        message.problems.append("a logits processor that fails")
    usable = st.text(CHINESE, min_size=1, max_size=12)
    draw_args(draw, {"message": values(usable, ["", "   ", None, 5, b"hi", "x" * 10_001, "\udcff"])}, ["message"],
              message, one_in)
    return setup, message


def chat_greedy(model) -> list[int]:
    return model.generate([[101, 872, 1962, 102]], max_new_tokens=4, do_sample=False)[0].token_ids


@PROFILES
def test_chat_arguments(chat_model, scale):
    before = chat_greedy(chat_model)

    @fuzz(100 * scale, chats(chat_model))
    def check(drawn):
        setup, message = drawn
        determined = setup.args.get("seed") is not None or not setup.args.get("do_sample", True)
        if setup.problems:
            with pytest.raises(EdgeInferError):
                Chat(chat_model, **setup.args)
            return
        chat = Chat(chat_model, **setup.args)
        history = list(setup.args.get("history") or [])
        text = message.args["message"]
        if message.problems:
            with pytest.raises(EdgeInferError):
                chat.reply(text)
            if "a logits processor that fails" not in message.problems:
                assert chat.history == history  # a refused message leaves the conversation as it was
                probe = chat.reply(GREETING)
                assert not determined or probe == Chat(chat_model, **setup.args).reply(GREETING)
        else:
            reply = chat.reply(text)
            assert isinstance(reply, str) and chat.history == [*history, text.strip(), reply]
            assert not determined or Chat(chat_model, **setup.args).reply(text) == reply
            assert isinstance(chat.reply(GREETING), str)  # the conversation goes on
        assert chat_greedy(chat_model) == before

    check()


# ---------------------------------------------------------------- MoveModel
@pytest.fixture(scope="module")
def xiangqi_model():
    return edgeinfer.load(BUNDLES / "xiangqi", device="cpu")


def played(choices: list[int]) -> Board:
    """The board after playing, from the start, the legal move each choice picks (until the game ends)."""
    board = Board()
    for choice in choices:
        moves = board.legal_moves()
        if not moves or board.outcome() is not None:
            break
        board.push(moves[choice % len(moves)])
    return board


@st.composite
def move_requests(draw) -> Drawn:
    """A board (a game some plies in, or junk), the arguments of `sample`, an earlier position of the same game
    (scored first, so the mover's kept prefix grows) and a seed."""
    game = draw(st.lists(st.integers(0, 10**6), max_size=30))
    table = {
        "board": values(st.just(game).map(played), ["x", None, Board().fen(), ["h2e2"]]),
        "temperature": values(st.one_of(st.floats(0.01, 10), st.sampled_from([1e-300, 1e300, 2, np.float32(0.5)])),
                              [0, -1.0, math.nan, math.inf, "1", True, None]),
        "rng": values(st.one_of(st.none(), st.integers(0, 99).map(np.random.default_rng)),
                      [5, "x", [], np.random.RandomState(0)]),
    }
    drawn = Drawn({"earlier": played(game[: draw(st.integers(0, len(game)))]), "seed": draw(st.integers(0, 99))})
    draw_args(draw, table, ["board", "temperature", "rng"], drawn, draw(st.sampled_from([0, 3])))
    if isinstance(drawn.args["board"], Board) and not drawn.args["board"].legal_moves():
        drawn.problems.append("the game is over")
    return drawn


@PROFILES
def test_move_model_arguments(xiangqi_model, scale):
    mover = MoveModel(xiangqi_model)  # one mover for every example: its kept game prefix must never go stale
    start = [s.logprob for s in mover.score(Board())]

    @fuzz(80 * scale, move_requests())
    def check(drawn):
        board, temperature, rng, seed = (drawn.args[k] for k in ("board", "temperature", "rng", "seed"))
        mover.score(drawn.args["earlier"])
        if drawn.problems:
            with pytest.raises(EdgeInferError):
                mover.sample(board, temperature, rng)
            assert [s.logprob for s in mover.score(Board())] == pytest.approx(start, abs=1e-4)
            return
        scored = mover.score(board)
        fresh = MoveModel(xiangqi_model).score(board)
        assert [s.move for s in scored] == [s.move for s in fresh]
        assert [s.logprob for s in scored] == pytest.approx([s.logprob for s in fresh], abs=1e-4)
        assert sorted(s.move for s in scored) == sorted(board.legal_moves())
        assert sum(s.probability for s in scored) == pytest.approx(1.0)
        assert mover.best(board).move == scored[0].move
        first = mover.sample(board, temperature, np.random.default_rng(seed)).move
        assert first == mover.sample(board, temperature, np.random.default_rng(seed)).move
        assert mover.sample(board, temperature, rng).move in board.legal_moves()

    check()


# ---------------------------------------------------------------- Reader.answer
QA_TEXT = "李白是唐代诗人床前明月光是李白写的诗谁写的静夜思"


@pytest.fixture(scope="module")
def reader():
    return edgeinfer.load(BUNDLES / "qa", device="cpu")


@st.composite
def questions(draw, reader) -> Drawn:
    """Questions with a context or passages each, and the options of `answer` for this reader."""
    defaults = reader.defaults
    drawn = Drawn()
    one_in = draw(st.sampled_from([0, 4]))  # every argument usable, or some not
    texts = st.text(QA_TEXT + "。，", min_size=1, max_size=40)
    n = draw(st.integers(1, 3))
    drawn.args["questions"] = [draw(texts) for _ in range(n)]
    given = draw(st.sampled_from(["context", "passages"]))
    drawn.args[given] = [draw(texts) if given == "context" else draw(st.lists(texts, min_size=1, max_size=3))
                         for _ in range(n)]
    longest = max(map(len, [*drawn.args["questions"], *drawn.args.get("context", []),
                            *itertools.chain(*drawn.args.get("passages", []))]))
    if one_in and rarely(draw, 6):
        where = draw(st.sampled_from(["questions", given]))
        drawn.args[where] = draw(st.sampled_from(["text", [], None, [[]] * n, ["x"] * (n + 1), [""] * n,
                                                  ["\x00"] * n, ["\udcff"] * n, [5] * n]))
        drawn.problems.append(f"{where}={drawn.args[where]!r}")
    if one_in and rarely(draw, 12):
        drawn.args["passages" if given == "context" else "context"] = [["x"]] * n
        drawn.problems.append("both context and passages")
    window = draw(st.one_of(st.none(), st.integers(2, 300), st.just(10**6)))
    table = {
        "top_k": values(st.one_of(st.integers(1, 5), st.just(10**9)), [0, -1, 1.5, True, "1", np.int64(2)]),
        "max_answer_len": values(st.one_of(st.none(), st.integers(1, 30), st.just(10**9)), [0, -1, 2.0, True]),
        "threshold": values(st.one_of(st.none(), st.floats(0, 1), st.sampled_from([-1.0, math.inf, 0])),
                            [math.nan, "0.5", True, [0.1]]),
        "batch_size": values(st.one_of(st.none(), st.integers(1, 64), st.just(10**9)), [0, -1, 1.5, True]),
        "batch_tokens": values(st.one_of(st.none(), st.integers(1, 500), st.just(10**9)), [0, -1, 1.5, True]),
        "stride": values(st.one_of(st.none(), st.integers(0, (window or defaults["window"]) - 1)), [-1, 1.5, True, "1"]),
        "max_context_chars": values(st.integers(longest, 10**6), [0, -1, 1.5, True, None, *[longest - 1] * (longest > 1)]),
        "max_questions": values(st.integers(n, 10**4), [0, -1, 1.5, None, *[n - 1] * (n > 1)]),
    }
    draw_args(draw, table, some(draw, table, max_size=5), drawn, one_in)
    if window is not None:
        drawn.args["window"] = window
    stride = drawn.args.get("stride")
    stride = defaults["stride"] if stride is None else stride
    if isinstance(stride, int) and not isinstance(stride, bool) and stride >= (window or defaults["window"]):
        drawn.problems.append(f"stride {stride} not below window {window}")
    if window is not None and isinstance(drawn.args["questions"], list) and not drawn.problems:
        # a BERT reader's window holds the question too: a small one may leave no room for passage tokens
        short = [q for q in drawn.args["questions"] if reader.features.window_size(
            reader.features.question(clean(q)), window) < 1]
        drawn.problems += [f"window {window} leaves no room after {q!r}" for q in short]
    return drawn


@PROFILES
def test_reader_answer_arguments(reader, scale):
    before = reader.answer(["谁写了静夜思"], context=["《静夜思》是李白写的诗。"])

    @fuzz(150 * scale, questions(reader))
    def check(drawn):
        if drawn.problems:
            with pytest.raises(EdgeInferError):
                reader.answer(**drawn.args)
            assert reader.answer(["谁写了静夜思"], context=["《静夜思》是李白写的诗。"]) == before
            return
        found = reader.answer(**drawn.args)
        groups = drawn.args.get("passages") or [[c] for c in drawn.args["context"]]
        assert len(found) == len(groups)
        threshold = drawn.args.get("threshold")
        for answers, group in zip(found, groups, strict=True):
            assert len(answers) <= drawn.args.get("top_k", 1)
            assert [a.score for a in answers] == sorted((a.score for a in answers), reverse=True)
            for a in answers:
                assert a.text == group[a.passage][a.start : a.end] and a.start < a.end
                assert 0 <= a.span_score <= 1 and math.isfinite(a.score)
                assert threshold is None or a.span_score >= threshold
        assert reader.answer(**drawn.args) == found

    check()


# ---------------------------------------------------------------- findings
@pytest.mark.parametrize(("history", "message"), [([], "\udcff"), (["a\udcffb"], "你好")])
def test_chat_refuses_lone_surrogates(chat_model, history, message):
    """The tokenizer raised a TypeError on a message, or (at the first reply) on a history turn, holding one."""
    with pytest.raises(InputError, match="a lone surrogate"):
        Chat(chat_model, history=history).reply(message)


def test_chat_checks_and_keeps_the_callers_stop_tokens(chat_model):
    """Chat replaced the caller's stop_token_ids with [SEP] unread: junk passed, real stops were dropped."""
    with pytest.raises(InputError, match="stop token -5"):
        Chat(chat_model, stop_token_ids=[-5])
    chat = Chat(chat_model, seed=0, stop_token_ids=[511])  # 。
    assert chat.settings.stop_token_ids == {511, chat.sep_id}
    assert "。" not in chat.reply("你好").rstrip("。")


@pytest.mark.parametrize(("call", "message"), [
    (lambda mover: mover.best("rnbakabnr/9/1c5c1/p1p1p1p1p/9/9/P1P1P1P1P/1C5C1/9/RNBAKABNR w"), "a xiangqi Board"),
    (lambda mover: mover.sample(Board(), 1.0, rng=5), "rng must be a numpy Generator"),  # AttributeError before
    (lambda mover: mover.sample(Board(), True), "temperature must be a finite number"),  # was taken as 1
])
def test_move_model_refuses_junk(xiangqi_model, call, message):
    with pytest.raises(InputError, match=message):
        call(MoveModel(xiangqi_model))


def test_reader_refuses_a_nan_threshold_and_long_questions(reader):
    """threshold=nan answered nothing, silently; a question had no length limit (a 50 MB one took 20 s and 4 GB)."""
    with pytest.raises(InputError, match="threshold must be a number"):
        reader.answer(["谁"], context=["李白是诗人。"], threshold=math.nan)
    with pytest.raises(InputError, match="question 0 has 11 characters, over the limit of 10"):
        reader.answer(["谁" * 11], context=["李白是诗人。"], max_context_chars=10)
