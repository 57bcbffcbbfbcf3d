"""Dialogue layout, truncation and the corpus-trained WordPiece tokenizer (torch-free)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from edgeinfer.chat import tidy
from edgeinfer.chat.format import encode_dialogue, reply_segment_id
from edgeinfer.errors import InputError
from edgeinfer.export.chat_data import windows
from edgeinfer.export.chat_tokenizer import (
    SPECIAL_TOKENS,
    load_tokenizer,
    special_token_ids,
    train_tokenizer,
)

CORPUS = ["hello, how are you? (fine)", "i'm fine, thanks! and you?", "ok, what's your favourite movie?",
          "你好，你好吗？", "我很好，谢谢。", "a b c d e f g h", "i've got it's awesome.", "thanks thanks thanks"] * 3


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(CORPUS, vocab_size=120)


@pytest.fixture(scope="module")
def ids(tok: Tokenizer) -> dict[str, int]:
    return {t: tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "你", "好", "ok", "how",
                                             "are", "you", "?", "f", "g", "h")}


def test_special_tokens_come_first(tok: Tokenizer) -> None:
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert special_token_ids(tok) == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "eos": 3}
    assert tok.get_vocab_size() <= 120


def test_every_corpus_character_is_a_piece(tok: Tokenizer) -> None:
    text = " ".join(CORPUS)
    assert tok.token_to_id("[UNK]") not in tok.encode(text, add_special_tokens=False).ids


def test_tokenizer_basic_strings(tok: Tokenizer, ids: dict[str, int]) -> None:
    assert tok.encode("Hello", add_special_tokens=False).ids == [ids["hello"]]  # lowercased
    assert tok.encode("你好", add_special_tokens=False).ids == [ids["你"], ids["好"]]  # one id per CJK char
    assert tok.encode("how are you?", add_special_tokens=False).ids == [ids[t] for t in ("how", "are", "you", "?")]
    assert tok.encode("Hélló", add_special_tokens=False).tokens == ["hello"]  # accents stripped
    assert tok.encode("hello", add_special_tokens=True).ids == [ids["hello"]]  # no template: layout is ours


def test_tokenizer_json_round_trip(tmp_path, tok: Tokenizer) -> None:
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    text = "Hello 你好, how are you? 😎"
    assert loaded.encode(text).ids == tok.encode(text).ids


@pytest.mark.parametrize("text", ["i'm fine, thanks!", "what's your favourite movie?", "你好，你好吗？",
                                  "i've got it's awesome", "ok, hello. how are you? (fine)"])
def test_decoding_then_tidying_gives_the_text_back(tok: Tokenizer, text: str) -> None:
    """Apostrophes and punctuation come back as typed once `tidy` closes the decoder's gaps."""
    assert tidy(tok.decode(tok.encode(text, add_special_tokens=False).ids)) == text


def test_three_utterances_exact(tok: Tokenizer, ids: dict[str, int]) -> None:
    CLS, SEP, HELLO, NI, HAO = ids["[CLS]"], ids["[SEP]"], ids["hello"], ids["你"], ids["好"]
    HOW, ARE, YOU, QMARK = ids["how"], ids["are"], ids["you"], ids["?"]
    got, segs = encode_dialogue(tok, ["hello", "你好", "how are you?"], max_len=64)
    assert got == [CLS, HELLO, SEP, NI, HAO, SEP, HOW, ARE, YOU, QMARK, SEP]
    assert segs == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert reply_segment_id(segs) == 1


def test_reply_segment_alternates(tok: Tokenizer) -> None:
    _, segs = encode_dialogue(tok, ["hello", "ok"], max_len=64)
    assert segs == [0, 0, 0, 1, 1]
    assert reply_segment_id(segs) == 0


def test_truncation_drops_oldest_whole_turns(tok: Tokenizer, ids: dict[str, int]) -> None:
    CLS, SEP, HELLO, NI, HAO, OK = ids["[CLS]"], ids["[SEP]"], ids["hello"], ids["你"], ids["好"], ids["ok"]
    history = ["how are you?", "hello", "你好", "ok"]
    # Full layout is 1 + 5 + 2 + 3 + 2 = 13 tokens; 8 fits the last three turns exactly.
    got, segs = encode_dialogue(tok, history, max_len=8)
    assert got == [CLS, HELLO, SEP, NI, HAO, SEP, OK, SEP]
    assert segs == [0, 0, 0, 1, 1, 1, 0, 0]  # alternation restarts at the first kept turn
    # One token less: "hello" no longer fits, so it goes whole (never a partial old turn).
    got, segs = encode_dialogue(tok, history, max_len=7)
    assert got == [CLS, NI, HAO, SEP, OK, SEP]
    assert segs == [0, 0, 0, 0, 1, 1]
    assert reply_segment_id(segs) == 0


def test_long_last_utterance_keeps_its_end(tok: Tokenizer, ids: dict[str, int]) -> None:
    got, segs = encode_dialogue(tok, ["hello", "a b c d e f g h"], max_len=5)
    assert got == [ids["[CLS]"], ids["f"], ids["g"], ids["h"], ids["[SEP]"]]
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


def test_emoji_mixed_script_and_unknown(tok: Tokenizer, ids: dict[str, int]) -> None:
    """Characters the corpus never had are [UNK] (the emoji too: this corpus has none)."""
    CLS, SEP, UNK = ids["[CLS]"], ids["[SEP]"], ids["[UNK]"]
    got, segs = encode_dialogue(tok, ["Hello 你好 😎", "𠀀 🦄 ok"], max_len=32)
    assert got == [CLS, ids["hello"], ids["你"], ids["好"], UNK, SEP, UNK, UNK, ids["ok"], SEP]
    assert segs == [0] * 6 + [1] * 4


def test_windows_cut_whole_turns() -> None:
    turns = [[1, 2], [3], [4, 5, 6], [7] * 10]
    # max_len 7: [CLS] 1 2 [SEP] 3 [SEP] = 6; next turn needs 4 more -> new window.
    assert windows(turns, max_len=7) == [[[1, 2], [3]], [[4, 5, 6]], [[7] * 5]]
