"""Dialogue layout, truncation and the BERT-Chinese tokenizer (torch-free)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from edgeinfer.chat.format import encode_dialogue, reply_segment_id
from edgeinfer.errors import InputError
from edgeinfer.export.chat_data import windows
from edgeinfer.export.chat_tokenizer import (
    VOCAB_PATH,
    VOCAB_SIZE,
    build_tokenizer,
    save_tokenizer,
)

PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
HELLO, NI, HAO, OK = 8701, 872, 1962, 8270
HOW, ARE, YOU, QMARK = 9510, 8995, 8357, 136


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return build_tokenizer()


def test_vocab_file_and_special_ids(tok: Tokenizer) -> None:
    lines = VOCAB_PATH.read_text(encoding="utf-8").rstrip("\n").split("\n")  # not splitlines: U+2028 is a token
    assert len(lines) == VOCAB_SIZE == tok.get_vocab_size()
    ids = [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")]
    assert ids == [PAD, UNK, CLS, SEP, MASK]


def test_tokenizer_basic_strings(tok: Tokenizer) -> None:
    assert tok.encode("Hello", add_special_tokens=False).ids == [HELLO]  # lowercased
    assert tok.encode("你好", add_special_tokens=False).ids == [NI, HAO]  # one id per CJK char
    assert tok.encode("how are you?", add_special_tokens=False).ids == [HOW, ARE, YOU, QMARK]
    assert tok.encode("Café", add_special_tokens=False).tokens == ["cafe"]  # accents stripped
    assert tok.encode("thanks", add_special_tokens=False).tokens == ["than", "##ks"]
    assert tok.encode("hello", add_special_tokens=True).ids == [HELLO]  # no template: layout is ours


def test_tokenizer_json_round_trip(tmp_path, tok: Tokenizer) -> None:
    loaded = Tokenizer.from_file(str(save_tokenizer(tmp_path / "tokenizer.json")))
    text = "Hello 你好, how are you? 😎"
    assert loaded.encode(text).ids == tok.encode(text).ids


def test_three_utterances_exact(tok: Tokenizer) -> None:
    ids, segs = encode_dialogue(tok, ["hello", "你好", "how are you?"], max_len=64)
    assert ids == [CLS, HELLO, SEP, NI, HAO, SEP, HOW, ARE, YOU, QMARK, SEP]
    assert segs == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert reply_segment_id(segs) == 1


def test_reply_segment_alternates(tok: Tokenizer) -> None:
    _, segs = encode_dialogue(tok, ["hello", "ok"], max_len=64)
    assert segs == [0, 0, 0, 1, 1]
    assert reply_segment_id(segs) == 0


def test_truncation_drops_oldest_whole_turns(tok: Tokenizer) -> None:
    history = ["how are you?", "hello", "你好", "ok"]
    # Full layout is 1 + 5 + 2 + 3 + 2 = 13 tokens; 8 fits the last three turns exactly.
    ids, segs = encode_dialogue(tok, history, max_len=8)
    assert ids == [CLS, HELLO, SEP, NI, HAO, SEP, OK, SEP]
    assert segs == [0, 0, 0, 1, 1, 1, 0, 0]  # alternation restarts at the first kept turn
    # One token less: "hello" no longer fits, so it goes whole (never a partial old turn).
    ids, segs = encode_dialogue(tok, history, max_len=7)
    assert ids == [CLS, NI, HAO, SEP, OK, SEP]
    assert segs == [0, 0, 0, 0, 1, 1]
    assert reply_segment_id(segs) == 0


def test_long_last_utterance_keeps_its_end(tok: Tokenizer) -> None:
    ids, segs = encode_dialogue(tok, ["hello", "a b c d e f g h"], max_len=5)
    f, g, h = 148, 149, 150
    assert ids == [CLS, f, g, h, SEP]
    assert segs == [0, 0, 0, 0, 0]


@pytest.mark.parametrize("bad", [[], ()])
def test_empty_history_raises(tok: Tokenizer, bad) -> None:
    with pytest.raises(InputError, match="no utterances"):
        encode_dialogue(tok, bad, max_len=32)


def test_bad_arguments_raise(tok: Tokenizer) -> None:
    with pytest.raises(InputError, match="sequence of strings"):
        encode_dialogue(tok, "hello", max_len=32)
    with pytest.raises(InputError, match="max_len"):
        encode_dialogue(tok, ["hello"], max_len=2)


def test_emoji_mixed_script_and_unknown(tok: Tokenizer) -> None:
    ids, segs = encode_dialogue(tok, ["Hello 你好 😎", "𠀀 🦄 ok"], max_len=32)
    assert ids == [CLS, HELLO, NI, HAO, 8105, SEP, UNK, UNK, OK, SEP]
    assert segs == [0] * 6 + [1] * 4


def test_windows_cut_whole_turns() -> None:
    turns = [[1, 2], [3], [4, 5, 6], [7] * 10]
    # max_len 7: [CLS] 1 2 [SEP] 3 [SEP] = 6; next turn needs 4 more -> new window.
    assert windows(turns, max_len=7) == [[[1, 2], [3]], [[4, 5, 6]], [[7] * 5]]
