"""Checks and cleaning of what callers pass to `Reader.answer`: clear InputErrors instead of crashes."""

from __future__ import annotations

import unicodedata

from ..errors import InputError


def clean(text: str) -> str:
    """Control and format characters become spaces: one for one, so offsets stay those of the caller's text."""
    return "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Cs") else c for c in text)


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{what} must be a str, got {type(value).__name__}")
    if not clean(value).strip():
        raise InputError(f"{what} is empty" + (" (only whitespace or control characters)" if value else ""))
    return value


def _list(value, what: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InputError(f"{what} must be a list, got {type(value).__name__}")
    return list(value)


def check_texts(questions, passages, context) -> tuple[list[str], list[list[str]]]:
    """(questions, passages per question); `context` is one passage per question."""
    questions = _list(questions, "questions")
    if not questions:
        raise InputError("questions is empty: pass at least one question")
    questions = [_text(q, f"question {i}") for i, q in enumerate(questions)]
    if (passages is None) == (context is None):
        raise InputError("pass exactly one of passages (a list of passages per question) or context (one per question)")
    if context is not None:
        groups = [[c] for c in _list(context, "context")]
        name = "context"
    else:
        groups = [_list(p, f"passages[{i}]") for i, p in enumerate(_list(passages, "passages"))]
        name = "passages"
    if len(groups) != len(questions):
        raise InputError(f"{len(questions)} questions but {len(groups)} {name}")
    for i, group in enumerate(groups):
        if not group:
            raise InputError(f"passages[{i}] is empty: give each question at least one passage")
        for j, text in enumerate(group):
            _text(text, f"context {i}" if context is not None else f"passage {j} of question {i}")
    return questions, groups


def check_positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return value
