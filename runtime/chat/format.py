"""Dialogue input layout shared by data preparation and the runtime (no torch).

Layout (DialoGPT-style with BERT special tokens, as in the seed)::

    [CLS] u1 [SEP] u2 [SEP] ... uk [SEP]
    seg:  0  0..0  0   1..1  1       (k-1)%2

``[CLS]`` has segment 0; utterance ``i`` (1-based) and its trailing ``[SEP]`` have segment
``(i - 1) % 2``, counted from the first turn that is kept. The reply to a history of ``k`` kept
turns therefore has segment ``k % 2`` (see :func:`reply_segment_id`).

Truncation to ``max_len`` drops the OLDEST turns whole and restarts the alternation at the first
kept turn, exactly like the training windows of ``edgeinfer.export.chat_data``, so the model never
sees a layout at inference that it did not see in training. If the newest utterance alone does
not fit, it is cut from the LEFT (its end, the part a reply answers, is kept); the cut may start
inside a word, leaving a leading ``##`` piece.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer

from ..errors import InputError

CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MIN_MAX_LEN = 3  # [CLS], at least one token of the last utterance, [SEP]


def special_ids(tokenizer: Tokenizer) -> tuple[int, int]:
    """Return ``(cls_id, sep_id)``; fails early when the tokenizer lacks them."""
    cls_id, sep_id = tokenizer.token_to_id(CLS_TOKEN), tokenizer.token_to_id(SEP_TOKEN)
    if cls_id is None or sep_id is None:
        raise InputError(f"tokenizer has no {CLS_TOKEN} or {SEP_TOKEN} token")
    return cls_id, sep_id


def check_utterances(utterances: Sequence[str]) -> None:
    """Refuse anything but a sequence of strings the tokenizer reads (a lone surrogate makes it raise a TypeError)."""
    if isinstance(utterances, str) or not all(isinstance(u, str) for u in utterances):
        raise InputError("utterances must be a sequence of strings, one per turn")
    for i, utterance in enumerate(utterances):
        try:
            utterance.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InputError(f"utterance {i} is not text: character {exc.start} is {utterance[exc.start]!r}, a lone "
                             "surrogate (bytes that were not UTF-8)") from None


def encode_turns(tokenizer: Tokenizer, utterances: Sequence[str]) -> list[list[int]]:
    """Tokenize each utterance without special tokens (one id list per turn)."""
    check_utterances(utterances)
    if not utterances:
        return []
    return [enc.ids for enc in tokenizer.encode_batch(list(utterances), add_special_tokens=False)]


def assemble(turns: Sequence[Sequence[int]], cls_id: int, sep_id: int) -> tuple[list[int], list[int]]:
    """Lay out already-tokenized turns as ``[CLS] t1 [SEP] t2 [SEP] ...`` with alternating segments."""
    input_ids, segment_ids = [cls_id], [0]
    for i, turn in enumerate(turns):
        input_ids.extend(turn)
        input_ids.append(sep_id)
        segment_ids.extend([i % 2] * (len(turn) + 1))
    return input_ids, segment_ids


def fit_turns(turns: Sequence[Sequence[int]], max_len: int) -> list[list[int]]:
    """Keep the newest turns whose layout fits ``max_len``; left-cut the last one if it alone is too long."""
    if max_len < MIN_MAX_LEN:
        raise InputError(f"max_len must be at least {MIN_MAX_LEN}, got {max_len}")
    if not turns:
        raise InputError("dialogue has no utterances; pass at least one")
    budget = max_len - 1  # room left after [CLS]
    last = list(turns[-1])[-(budget - 1):]  # keep the end of the newest utterance
    kept = [last]
    budget -= len(last) + 1
    for turn in reversed(turns[:-1]):
        if len(turn) + 1 > budget:
            break
        kept.append(list(turn))
        budget -= len(turn) + 1
    kept.reverse()
    return kept


def encode_dialogue(
    tokenizer: Tokenizer, utterances: Sequence[str], max_len: int
) -> tuple[list[int], list[int]]:
    """Encode a history (oldest first) as ``(input_ids, segment_ids)`` of at most ``max_len`` tokens.

    ``max_len`` bounds the history only: a caller that generates a reply must reserve room for it.
    """
    cls_id, sep_id = special_ids(tokenizer)
    return assemble(fit_turns(encode_turns(tokenizer, utterances), max_len), cls_id, sep_id)


def reply_segment_id(segment_ids: Sequence[int]) -> int:
    """Segment id of the turn that follows an encoded history (the model's reply)."""
    if len(segment_ids) < 2:
        raise InputError("segment_ids holds no turn; encode a non-empty dialogue first")
    return 1 - segment_ids[-1]
