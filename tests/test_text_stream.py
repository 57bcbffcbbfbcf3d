"""Incremental detokenization against the tokenizer's own decode of the whole sequence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CHINESE, byte_level_tokenizer
from tokenizers import Tokenizer

from edgeinfer.lm.text_stream import REPLACEMENT, TextStream

CHAT_TOKENIZER = Path(__file__).parents[1] / "runtime" / "bundles" / "chat" / "tokenizer.json"


def stream_all(tokenizer, ids) -> list[str]:
    stream = TextStream(tokenizer)
    return [stream.push(t) for t in ids] + [stream.flush()]


@pytest.mark.parametrize("name", ["byte_level", "wordpiece"])
def test_random_ids_stream_to_the_whole_decode(name):
    tok = byte_level_tokenizer() if name == "byte_level" else Tokenizer.from_file(str(CHAT_TOKENIZER))
    rng = np.random.default_rng(0)
    for _ in range(100):
        ids = rng.integers(0, tok.get_vocab_size(), 30).tolist()
        assert "".join(stream_all(tok, ids)) == tok.decode(ids)


def test_characters_split_over_tokens_come_out_whole():
    tok = byte_level_tokenizer()
    ids = tok.encode(CHINESE).ids
    assert len(ids) > len(CHINESE)  # some characters really are split
    deltas = stream_all(tok, ids)
    assert "".join(deltas) == CHINESE
    assert not any(REPLACEMENT in d for d in deltas)
    # whole-text re-decoding sliced at the old length (what a naive stream does) loses those characters
    naive, shown = [], ""
    for k in range(1, len(ids) + 1):
        text = tok.decode(ids[:k])
        naive.append(text[len(shown) :])
        shown = text
    assert "".join(naive) != CHINESE


def test_a_half_character_at_the_end_is_flushed():
    tok = byte_level_tokenizer()
    ids = tok.encode("江").ids
    assert len(ids) >= 2  # its three UTF-8 bytes are not one token
    stream = TextStream(tok)
    assert [stream.push(t) for t in ids[:-1]] == [""] * (len(ids) - 1)
    assert stream.flush() == tok.decode(ids[:-1]) == REPLACEMENT
    assert stream.flush() == ""
