"""What the fuzz tests (tests/test_fuzz_*.py) share: derandomized runs, two profiles, junk and decoding values.

Every run draws the same examples (`derandomize=True`, no example database), so a failure reproduces by running
the test again. Each test takes `scale` from `PROFILES`: the quick profile runs in CI, the long one (`-m slow`)
draws ten times as many examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROFILES = pytest.mark.parametrize("scale", [pytest.param(1, id="quick"),
                                             pytest.param(10, id="long", marks=pytest.mark.slow)])

# path tricks and format fields: what a hostile manifest or argument names instead of a file or a word
TRICKY_TEXT = ["", " ", "-", "..", "../x", "/etc/passwd", "C:\\x", "a/../../b", "{layer}{x}", "{0}", "%s",
               "\udcff", "\u2028", "\ufeff", "nan", "-1", "1e999", "0x10", "\uff13", "\u00b2", "x" * 300]
HUGE_INTS = [2**31, 2**63 - 1, 2**63, 2**64 + 1, 10**18, 10**100, -(2**63) - 1, -(10**100)]
ODD_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1e-300, 1e300, 2.5]


def fuzz(examples: int, *strategies: st.SearchStrategy) -> Callable[[Callable], Callable]:
    """`@fuzz(n, strategy, ...)` on an inner check: a hypothesis test of `n` examples, the same ones on every run."""
    def wrap(check: Callable) -> Callable:
        return settings(max_examples=examples, deadline=None, derandomize=True, database=None, print_blob=False,
                        suppress_health_check=list(HealthCheck))(given(*strategies)(check))
    return wrap


def rarely(draw: Callable, one_in: int) -> bool:
    """True about once in `one_in` draws (a value from the middle of the range: hypothesis favours its ends)."""
    return draw(st.integers(1, one_in)) == (one_in + 1) // 2


def text() -> st.SearchStrategy[str]:
    """Short text: ASCII, Chinese, controls, and the tricky strings above (lone surrogates among them)."""
    return st.one_of(st.sampled_from(TRICKY_TEXT),
                     st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
                     st.text("李白是诗人床前明月光谁写的", min_size=1, max_size=8))


def json_junk(depth: int = 2) -> st.SearchStrategy:
    """Any JSON value a hostile manifest may hold in place of the expected one."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(HUGE_INTS),
                        st.sampled_from(ODD_FLOATS), text())
    if depth == 0:
        return scalars
    inner = json_junk(depth - 1)
    return st.one_of(scalars, st.lists(inner, max_size=3), st.dictionaries(text(), inner, max_size=3))


# ---------------------------------------------------------------- decoding options (generate, stream, Chat)
def is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def keep_all(request_id: int, generated: list[int], logits: np.ndarray) -> None:
    """Changes nothing."""


@dataclass(frozen=True)
class Ban:
    """Bans some tokens: they must never be generated."""

    tokens: frozenset

    def __call__(self, request_id: int, generated: list[int], logits: np.ndarray) -> None:
        logits[list(self.tokens)] = -np.inf


def ban_all(request_id: int, generated: list[int], logits: np.ndarray) -> None:
    logits[:] = -np.inf


def write_nan(request_id: int, generated: list[int], logits: np.ndarray) -> None:
    logits[0] = np.nan


def fail(request_id: int, generated: list[int], logits: np.ndarray) -> None:
    raise ValueError("the caller's processor failed")


FAILING_PROCESSORS = (ban_all, write_nan, fail)  # refused once decoding runs, not when stream() is called


def values(valid: list | st.SearchStrategy, invalid: list) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    return (valid if isinstance(valid, st.SearchStrategy) else st.sampled_from(valid)), st.sampled_from(invalid)


def decoding_values(model, alphabet: str) -> dict[str, tuple[st.SearchStrategy, st.SearchStrategy]]:
    """(usable, unusable) values of each decoding option a bundle's generation block may also set."""
    vocab = model.vocab_size
    ids = st.integers(0, vocab - 1)
    words = st.text(alphabet, min_size=1, max_size=3)
    strings = values(st.one_of(st.lists(words, max_size=2), words), [[""], [1], b"x", 5, [None], ""])
    if model.tokenizer is None:
        strings = values([[], ()], [["a"], "a", [""], 5])
    return {
        "max_new_tokens": values(st.one_of(st.integers(1, 6), st.just(np.int64(4))),
                                 [0, -1, -(2**64), 2.0, "3", True, [3], math.nan]),
        "min_new_tokens": values(st.integers(0, 2), [-1, 1.0, "1", True, math.nan]),
        "do_sample": values([True, False, np.bool_(False)], [0, 1, "yes", math.nan, [True]]),
        "temperature": values(st.one_of(st.floats(0.05, 5), st.sampled_from([1e-30, 1e30, 2, np.float32(0.7)])),
                              [0, -1.0, math.nan, math.inf, -math.inf, "1", True, [1.0]]),
        "top_k": values(st.one_of(st.integers(0, vocab + 3), st.sampled_from([2**70, np.int64(5)])),
                        [-1, 2.5, "5", True, math.nan]),
        "top_p": values(st.one_of(st.floats(0.01, 1), st.sampled_from([1, 1e-300, 5e-324])),
                        [0, -0.5, 1.0001, math.nan, math.inf, "0.5", True]),
        "repetition_penalty": values(st.one_of(st.floats(0.2, 5), st.sampled_from([1e-300, 1e300])),
                                     [0, -1.0, math.inf, math.nan, "1", True]),
        "stop_token_ids": values(st.one_of(st.lists(ids, max_size=3), st.sets(ids, max_size=2),
                                           st.lists(ids, max_size=2).map(tuple),
                                           st.lists(ids, max_size=2).map(lambda t: np.array(t, dtype=np.int64))),
                                 [[vocab], [-1], ["1"], [1.5], [True], 5, "5", np.array(5), np.array([[1]])]),
        "stop_strings": strings,
        "logits_processor": values(st.one_of(st.just(keep_all), st.sets(ids, min_size=1, max_size=2).map(
            lambda banned: Ban(frozenset(banned)))), [*FAILING_PROCESSORS, 5, "f"]),
    }


