"""The Chat session: reused-cache turns equal fresh runs, [SEP] stops the reply, bad messages are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgeinfer
from edgeinfer.chat import Chat, tidy
from edgeinfer.errors import InputError

torch = pytest.importorskip("torch")


CORPUS = ["hello there, how are you?", "i'm fine, thanks! what's new?", "tell me more about it.",
          "你好吗？我很好。", "message number one with several words in it", "0 1 2 3 4 5 6 7 8 9"] * 2
CLS, SEP = 2, 3  # the trained tokenizer's special ids


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    from edgeinfer.export.chat_tokenizer import special_token_ids, train_tokenizer
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.onnx_export import export_gpt_bundle

    root = tmp_path_factory.mktemp("chat")
    tokenizer = train_tokenizer(CORPUS, vocab_size=150)
    tokenizer.save(str(root / "tokenizer.json"))
    torch.manual_seed(5)
    model = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), n_positions=48, n_embd=32, n_layer=2, n_head=4,
                          n_segments=2))
    for p in model.parameters():
        p.data.mul_(10)
    with torch.no_grad():  # make [SEP] likely after a few tokens so replies end by themselves
        model.lm_head.weight[SEP] *= 1.5
    export_gpt_bundle(model, root / "bundle", task="chat", tokenizer_file=root / "tokenizer.json",
                      special_tokens=special_token_ids(tokenizer))
    return edgeinfer.load(root / "bundle", device="cpu")


def test_reused_cache_turns_equal_fresh_runs(chat_model):
    chat = Chat(chat_model, do_sample=False, max_new_tokens=6)
    for message in ["hello there", "你好吗？", "tell me more 🙂"]:
        history = list(chat.history)
        reply = chat.reply(message)
        fresh = Chat(chat_model, do_sample=False, max_new_tokens=6, history=history).reply(message)
        assert reply == fresh
    assert len(chat.history) == 6


def test_truncation_keeps_replying(chat_model):
    chat = Chat(chat_model, do_sample=False, max_new_tokens=6)
    for i in range(12):  # the 48-position model must drop old turns
        chat.reply(f"message number {i} with several words in it")
    assert len(chat.history) == 24


def test_reply_stops_at_sep(chat_model):
    chat = Chat(chat_model, do_sample=True, seed=1, max_new_tokens=20)
    hello = chat_model.tokenizer.token_to_id("hello")
    events = list(chat_model.stream([[CLS, hello, SEP]], segment_ids=[[0, 0, 0]], reply_segment=1,
                                    stop_token_ids=[SEP], max_new_tokens=20, do_sample=True, seed=1, top_k=5))
    assert events[-1].finished in ("stop_token", "length")
    if events[-1].finished == "stop_token":
        assert events[-1].token_id == SEP and all(e.token_id != SEP for e in events[:-1])
    assert "[SEP]" not in chat.reply("hi")


def test_finish_reason_tells_a_cut_reply(chat_model):
    """A reply held past max_new_tokens reports "length"; one that ends at [SEP] reports "stop_token"."""
    def only_sep(_request, _generated, logits):
        logits[:] = -np.inf
        logits[SEP] = 0.0

    cut = Chat(chat_model, seed=0, max_new_tokens=3, min_new_tokens=3)
    assert cut.reply("hello there") and cut.finish_reason == "length"
    ended = Chat(chat_model, seed=0, max_new_tokens=3, logits_processor=only_sep)
    assert ended.reply("hello there") == "" and ended.finish_reason == "stop_token"
    ended.reset()
    assert ended.finish_reason is None


def test_seeded_sampling_is_reproducible(chat_model):
    a = Chat(chat_model, seed=3).reply("hello")
    assert a == Chat(chat_model, seed=3).reply("hello")


@pytest.mark.parametrize("message, error", [("", "empty message"), ("   ", "empty message"), (42, "must be text"),
                                            ("x" * 10_001, "over the 10000 limit")])
def test_bad_messages(chat_model, message, error):
    chat = Chat(chat_model, do_sample=False, max_new_tokens=4)
    with pytest.raises(InputError, match=error):
        chat.reply(message)
    assert chat.history == [] and isinstance(chat.reply("ok"), str)


def test_huge_and_mixed_messages(chat_model):
    chat = Chat(chat_model, do_sample=False, max_new_tokens=4)
    chat.reply("长" * 5000)  # cut from the left to fit
    chat.reply("mixed 中文 and emoji 🎉🎉 \u200b")
    assert len(chat.history) == 4


def test_tidy_removes_gaps_between_chinese_characters():
    assert tidy("你 好 ， world 吗") == "你好， world 吗"  # only gaps between two CJK characters go
    assert tidy("i ' m fine , thanks !") == "i'm fine, thanks!"


def test_cli_once(chat_model, tmp_path, capsys):
    from edgeinfer.cli import main

    (tmp_path / "h.json").write_text(json.dumps(["hi", "hello"]))
    args = ["chat", "--bundle", str(chat_model.folder), "--once", "how are you", "--greedy", "--json"]
    assert main([*args, "--history", str(tmp_path / "h.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = Chat(chat_model, do_sample=False, history=["hi", "hello"]).reply("how are you")
    assert out["reply"] == expected and out["history"][:3] == ["hi", "hello", "how are you"]
    assert main([*args, "--history", str(tmp_path / "missing.json")]) == 2
    assert "cannot read history file" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.parametrize("seed", range(5))
def test_tidied_stream_equals_tidying_the_whole_reply(seed):
    """Apostrophes, CJK gaps and spaces before punctuation: the streamed pieces add up to tidy(whole text)."""
    from edgeinfer.chat import TidyStream

    rng = np.random.default_rng(seed)
    pieces = ["i", " '", " ve", " got", " it", " '", " s", " 好", " 的", " !", " ok", " ,", " what", " ' ", "s", " 吗", "."]
    chosen = [pieces[i] for i in rng.integers(0, len(pieces), 30)]
    stream = TidyStream()
    out = "".join(stream.push(p, i == len(chosen) - 1) for i, p in enumerate(chosen))
    assert out == tidy("".join(chosen)) == stream.shown


def test_replies_with_apostrophes_are_whole():
    """The shipped bundle's greedy replies hold apostrophes ("i'm ..."); the streamed reply is the whole text."""
    from edgeinfer.chat import encode_dialogue, reply_segment_id
    from edgeinfer.loader import default_bundle

    model = edgeinfer.load(default_bundle("chat"), device="cpu")
    for message in ("what's your favourite movie?", "how are you?"):
        budget = model.max_positions - model.manifest["generation"]["max_new_tokens"] - 1
        ids, segments = encode_dialogue(model.tokenizer, ["hi", "hello", message], budget)
        whole = model.generate([ids], segment_ids=[segments], reply_segment=reply_segment_id(segments),
                               do_sample=False, stop_token_ids=[model.tokenizer.token_to_id("[SEP]")])[0].text
        reply = Chat(model, do_sample=False, history=["hi", "hello"]).reply(message)
        assert reply == tidy(whole) and len(reply) > 3
