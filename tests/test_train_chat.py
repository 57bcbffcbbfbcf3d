"""The chat training chain on a tiny corpus: data files, training that writes model.pt, export to a bundle Chat opens."""

from __future__ import annotations

import json

import pytest

import edgeinfer
from edgeinfer.chat import Chat

torch = pytest.importorskip("torch")

CONVERSATIONS = {
    "chitchat": [["hi there", "hello! how are you?", "fine, thanks."], ["what's up?", "not much, you?"]] * 4,
    "chatterbot_zh": [["你好", "你好，很高兴见到你。"], ["你叫什么名字？", "我是一个聊天机器人。"]] * 4,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from edgeinfer.export.chat_data import Conversation, build_split, save_split
    from edgeinfer.export.chat_tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("chat-data")
    conversations = [Conversation(source, str(i), turns) for source, convs in CONVERSATIONS.items()
                     for i, turns in enumerate(convs)]
    tokenizer = train_tokenizer((u for c in conversations for u in c.utterances), vocab_size=200)
    tokenizer.save(str(folder / "tokenizer.json"))
    for name in ("train", "valid", "test"):
        save_split(folder / f"{name}.npz", build_split(tokenizer, conversations, max_len=64, desc=name)[0])
    return folder


def test_train_then_export_gives_a_bundle_that_chats(data, tmp_path):
    from edgeinfer.export.train_chat import GENERATION, main

    work, out = tmp_path / "work", tmp_path / "bundle"
    args = ["--data", str(data), "--work", str(work), "--out", str(out), "--steps", "3", "--eval-every", "2",
            "--batch-size", "2", "--layers", "1", "--embd", "32", "--heads", "2", "--threads", "1"]
    main([*args, "--no-export"])
    log = json.loads((work / "training.json").read_text())
    assert log["steps"] == 3 and [step for step, _ in log["valid"]] == [2, 3]
    assert (work / "model.pt").is_file() and not out.exists()
    main([*args, "--export-only"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["special_tokens"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "eos": 3}
    assert manifest["generation"] == {**GENERATION, "stop_token_ids": [3]}
    assert manifest["training"]["steps"] == 3 and manifest["model"]["vocab_size"] <= 200
    chat = Chat(edgeinfer.load(out, device="cpu"), seed=0, max_new_tokens=5)
    chat.reply("你好")
    assert chat.finish_reason in ("stop_token", "length") and len(chat.history) == 2
