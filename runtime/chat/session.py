"""Multi-turn chat over a DialoGPT-style bundle: history layout, kept KV cache, sampled and streamed replies.

The history is laid out as `[CLS] u1 [SEP] u2 [SEP] …` with segment ids alternating per speaker
(`edgeinfer.chat.format`); the reply continues the alternation and ends at `[SEP]`. When the history no longer
fits, the oldest turns are dropped whole. Between turns the cache of the laid-out history is kept, so a turn
runs only the new message (and the previous reply), not the whole conversation; after truncation changes the
layout the cache is rebuilt once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ..errors import BundleError, InputError
from ..lm import Prefix, decode_options
from .format import (
    MIN_MAX_LEN,
    check_utterances,
    encode_dialogue,
    reply_segment_id,
    special_ids,
)

_CJK_GAP = re.compile(r"(?<=[\u3000-\u9fff\uff00-\uffef]) (?=[\u3000-\u9fff\uff00-\uffef])")
_BEFORE_PUNCT = re.compile(r" (?=[,.!?;:%)\]}])")
_AFTER_OPEN = re.compile(r"(?<=[(\[{]) ")
_APOSTROPHE = re.compile(r"(?<=\w) ' (?=\w)")
MAX_MESSAGE_CHARS = 10_000


def tidy(text: str) -> str:
    """WordPiece decoding puts spaces between Chinese characters, around punctuation and around apostrophes."""
    return _APOSTROPHE.sub("'", _AFTER_OPEN.sub("", _BEFORE_PUNCT.sub("", _CJK_GAP.sub("", text)))).strip()


def longest_reply(model) -> int:
    """The largest max_new_tokens a chat model takes: its context must still hold the shortest conversation."""
    return model.max_positions - 1 - MIN_MAX_LEN  # 1: the [SEP] the reply ends with


class TidyStream:
    """Streams `tidy(text)` of text that arrives in pieces: only what later pieces can no longer change.

    `tidy` only deletes spaces, and whether a space goes depends on at most the next four characters, so the
    tidied text of all but the last few characters is final.
    """

    HOLD = 6

    def __init__(self) -> None:
        self.raw, self.shown = "", ""

    def push(self, piece: str, last: bool) -> str:
        self.raw += piece
        if last:
            final = tidy(self.raw)
        else:
            settled = tidy(self.raw[: max(0, len(self.raw) - self.HOLD)])
            final = settled[: max(0, len(settled) - self.HOLD)]
        if len(final) <= len(self.shown) or not final.startswith(self.shown):
            return ""
        new, self.shown = final[len(self.shown) :], final
        return new


class Chat:
    """One conversation with a chat bundle; replies stop at [SEP].

    Decoding options default to the bundle's manifest (its generation block); keyword options override them.
    """

    def __init__(self, model, *, seed: int | None = None, history: list[str] | None = None, **options) -> None:
        if model.manifest["task"] != "chat":
            raise BundleError(f"Chat needs a bundle for task 'chat'; this one is for task {model.manifest['task']!r}")
        if model.tokenizer is None or not model.uses_segments:
            raise BundleError("a chat bundle needs a tokenizer and segment embeddings")
        self.model = model
        self.cls_id, self.sep_id = special_ids(model.tokenizer)
        self.options = {k: v for k, v in options.items() if v is not None}
        decode_options(model, **self.options)  # checked now, not at the first message; the caller's stops as given
        self.options["stop_token_ids"] = [*self.options.get("stop_token_ids", ()), self.sep_id]
        self.settings = decode_options(model, **self.options)
        if self.settings.max_new_tokens > longest_reply(model):
            raise InputError(f"max_new_tokens {self.settings.max_new_tokens} leaves no room for the conversation: "
                             f"this model's context is {model.max_positions} tokens, so at most {longest_reply(model)}")
        if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0):
            raise InputError(f"seed must be an integer >= 0, got {seed!r}")
        if history is not None and not isinstance(history, list):
            raise InputError("history must be a list of strings")
        check_utterances(history or [])
        self.seed = seed
        self.turns = 0
        self.finish_reason: str | None = None  # how the last reply ended: "stop_token" ([SEP]) or "length" (cut)
        self.history: list[str] = list(history or [])
        self._kept: Prefix | None = None

    def reset(self) -> None:
        self.history, self._kept, self.turns, self.finish_reason = [], None, 0, None

    def _layout(self, message: str) -> tuple[list[int], list[int]]:
        if not isinstance(message, str):
            raise InputError(f"a message must be text, got {type(message).__name__}")
        message = message.strip()
        if not message:
            raise InputError("empty message")
        if len(message) > MAX_MESSAGE_CHARS:
            raise InputError(f"message of {len(message)} characters is over the {MAX_MESSAGE_CHARS} limit")
        budget = self.model.max_positions - self.settings.max_new_tokens - 1
        return encode_dialogue(self.model.tokenizer, [*self.history, message], budget)

    def stream(self, message: str) -> Iterator[str]:
        """Yield the reply's text as it is generated; the turn enters the history when the reply is done."""
        ids, segments = self._layout(message)
        kept = self._kept
        if kept is None or ids[: len(kept.token_ids)] != kept.token_ids or segments[: len(kept.token_ids)] != kept.segment_ids:
            kept = None  # truncation moved the layout: start over
        start = len(kept.token_ids) if kept else 0
        rest, rest_segments = ids[start:], segments[start:]
        if len(rest) > 1:  # keep all but the last token in the cache; generation starts from that one
            kept = self.model.prefill(rest[:-1], segment_ids=rest_segments[:-1], prefix=kept)
        seed = None if self.seed is None else [self.seed + self.turns]
        events = self.model.stream([rest[-1:]], prefix=kept, segment_ids=[rest_segments[-1:]],
                                   reply_segment=reply_segment_id(segments), seed=seed, **self.options)
        shown = TidyStream()  # the reply's text as decoded ([SEP] decodes to nothing), tidied as it settles
        for event in events:
            piece = shown.push(event.text, bool(event.finished))
            if piece:
                yield piece
            self.finish_reason = event.finished  # set on the last event
        self._kept, self.turns = kept, self.turns + 1
        self.history += [message.strip(), shown.shown]

    def reply(self, message: str) -> str:
        return "".join(self.stream(message))
