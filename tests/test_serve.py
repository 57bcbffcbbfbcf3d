"""`edgeinfer serve` as a real server on 127.0.0.1, driven by the official openai client and httpx: answers equal
the library's, concurrent streams, disconnects free slots, a full queue answers 429, bad requests 400, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import edgeinfer
from edgeinfer.chat import Chat
from edgeinfer.cli import main
from edgeinfer.loader import default_bundle
from edgeinfer.xiangqi import Board
from edgeinfer.xiangqi.mover import MoveModel
from edgeinfer.xiangqi.search import searched_best

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("torch")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, models: dict, *flags: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        specs = [f"--model={name}={path}" for name, path in models.items()]
        self.process = subprocess.Popen([sys.executable, "-m", "edgeinfer", "serve", "--port", str(self.port),
                                         "--device", "cpu", "--threads", "1", *specs, *flags],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become ready in 60 s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def gpt(lively_bundles):
    return edgeinfer.load(lively_bundles["contrib"], device="cpu")


@pytest.fixture(scope="module")
def templated(tmp_path_factory):
    """A bundle exported from a checkpoint that ships a chat template."""
    from conftest import templated_checkpoint

    from edgeinfer.export.hf_bundle import export_hf_checkpoint

    root = tmp_path_factory.mktemp("templated")
    export_hf_checkpoint(templated_checkpoint(root / "hf"), root / "bundle")
    return root / "bundle"


@pytest.fixture(scope="module")
def server(lively_bundles, templated):
    s = Server({"gpt": lively_bundles["contrib"], "chat": default_bundle("chat"), "qa": default_bundle("qa"),
                "xiangqi": default_bundle("xiangqi"), "templated": templated}, "--max-active", "8", "--max-queue", "64")
    yield s
    s.stop()


def _alone(model, prompt: list[int], n: int) -> list[int]:
    return model.generate([prompt], max_new_tokens=n, do_sample=False, stop_token_ids=[])[0].token_ids


def test_openai_client_plain_and_streamed(server, gpt):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    assert {m.id for m in client.models.list().data} == {"gpt", "chat", "qa", "xiangqi", "templated"}
    prompt = [5, 6, 7]
    expected = gpt.decode(_alone(gpt, prompt, 10))
    plain = client.completions.create(model="gpt", prompt=prompt, max_tokens=10, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert plain.choices[0].text == expected and plain.usage.completion_tokens == 10
    assert plain.usage.prompt_tokens == 3
    chunks = list(client.completions.create(model="gpt", prompt=prompt, max_tokens=10, temperature=0, stream=True,
                                            extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_completions_lay_out_the_messages_as_the_chat_session_does(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    model = edgeinfer.load(default_bundle("chat"), device="cpu")
    for message in ("你好", "what's your favourite movie?"):
        expected = Chat(model, do_sample=False, history=["hi", "hello"]).reply(message)
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": message}]
        got = client.chat.completions.create(model="chat", messages=messages, temperature=0)
        assert got.choices[0].message.content == expected
        streamed = client.chat.completions.create(model="chat", messages=messages, temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected


def test_chat_completions_use_the_checkpoints_chat_template(server, templated):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    model = edgeinfer.load(templated, device="cpu")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "滚滚长江"}]
    prompt = model.encode(model.chat_template.render(messages))
    expected = model.generate([prompt], max_new_tokens=12, do_sample=False, stop_token_ids=[])[0].text
    got = client.chat.completions.create(model="templated", messages=messages, max_tokens=12, temperature=0,
                                         extra_body={"ignore_eos": True})
    assert got.choices[0].message.content == expected and got.usage.prompt_tokens == len(prompt)


async def _stream_ids(client, prompt: list[int], n: int) -> str:
    body = {"model": "gpt", "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True, "ignore_eos": True}
    text = ""
    async with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                text += json.loads(line[6:])["choices"][0]["text"]
    return text


def test_32_concurrent_streams_each_equal_its_request_alone(server, gpt):
    prompts = [[(7 * i + j) % 96 + 1 for j in range(i % 5 + 1)] for i in range(32)]

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(_stream_ids(client, p, 12) for p in prompts))

    got = asyncio.run(main())
    assert got == [gpt.decode(_alone(gpt, p, 12)) for p in prompts]


def _metric(server, name: str, model: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("model") == model:
                return sample.value
    return 0.0


def test_metrics_parse_and_count(server):
    httpx.post(f"{server.url}/v1/completions", json={"model": "gpt", "prompt": [1, 2], "max_tokens": 3})
    assert _metric(server, "edgeinfer_generated_tokens_total", "gpt") >= 3
    assert _metric(server, "edgeinfer_time_to_first_token_seconds_count", "gpt") >= 1
    assert _metric(server, "edgeinfer_active_slots", "gpt") == 0


def test_a_client_that_disconnects_frees_its_slot(lively_bundles):
    server = Server({"chat": default_bundle("chat")}, "--max-active", "1", "--max-queue", "4")
    try:
        body = {"model": "chat", "prompt": "你好", "max_tokens": 240, "temperature": 0, "stream": True,
                "ignore_eos": True}
        with httpx.Client(base_url=server.url, timeout=30) as client:
            with client.stream("POST", "/v1/completions", json=body) as response:
                lines = response.iter_lines()
                for _ in range(3):
                    next(lines)
            time.sleep(1.0)
            generated = _metric(server, "edgeinfer_generated_tokens_total", "chat")
            assert generated < 200  # cancelled well before its 240 tokens
            assert _metric(server, "edgeinfer_active_slots", "chat") == 0
            again = client.post("/v1/completions", json={**body, "stream": False, "max_tokens": 5})
            assert again.status_code == 200 and again.json()["usage"]["completion_tokens"] == 5
    finally:
        server.stop()


def test_a_full_queue_answers_429_then_recovers():
    server = Server({"chat": default_bundle("chat")}, "--max-active", "1", "--max-queue", "2")
    try:
        body = {"model": "chat", "prompt": "你好", "max_tokens": 200, "temperature": 0, "ignore_eos": True}

        async def burst():
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                return await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(10)))

        answers = asyncio.run(burst())
        codes = sorted(a.status_code for a in answers)
        assert set(codes) == {200, 429} and codes.count(200) >= 2  # at least the queue's bound
        refused = next(a for a in answers if a.status_code == 429)
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["type"] == "rate_limit_error"
        assert httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("body, param", [
    ({"prompt": [1, 2], "max_tokens": "many"}, "max_tokens"),
    ({"prompt": [1, 2], "temperature": -1}, "temperature"),
    ({"prompt": [1, 2], "top_p": 2}, "top_p"),
    ({"prompt": [1, 2], "n": 100}, "n"),
    ({"prompt": [1, 2], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": [1, 2], "max_tokens": 4, "min_tokens": 9}, "min_tokens"),
    ({"prompt": [1000]}, "prompt"),
    ({"prompt": list(range(1, 80))}, None),
    ({"prompt": []}, "prompt"),
    ({"max_tokens": 3}, "prompt"),
])
def test_malformed_requests_get_400_naming_the_field(server, body, param):
    answer = httpx.post(f"{server.url}/v1/completions", json={"model": "gpt", **body})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param or param in error["message"]


def test_bad_json_unknown_model_and_wrong_task(server):
    bad = httpx.post(f"{server.url}/v1/completions", content=b"{bad", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]
    missing = httpx.post(f"{server.url}/v1/completions", json={"model": "nope", "prompt": "x"})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
    wrong = httpx.post(f"{server.url}/v1/completions", json={"model": "qa", "prompt": "x"})
    assert wrong.status_code == 400
    assert httpx.post(f"{server.url}/v1/xiangqi/move", json={"moves": "zz"}).status_code == 400
    assert httpx.post(f"{server.url}/v1/qa", json={"question": "谁"}).status_code == 400


def test_qa_and_xiangqi_answer_as_the_library(server):
    reader = edgeinfer.load(default_bundle("qa"), device="cpu")
    items = [{"question": "「画蛇添足」出自哪部典籍", "context": "画蛇添足，出自《战国策·齐策二》，比喻做了多余的事，反而不恰当。"},
             {"question": "谁写了三国演义", "passages": ["罗贯中写了三国演义。", "水浒传的作者是施耐庵。"]}]
    got = httpx.post(f"{server.url}/v1/qa", json=items, timeout=30).json()
    expected = reader.answer([i["question"] for i in items], passages=[[items[0]["context"]], items[1]["passages"]])
    for answer, want in zip(got, expected):
        assert answer["answer"]["text"] == want[0].text and answer["answer"]["start"] == want[0].start
    move = httpx.post(f"{server.url}/v1/xiangqi/move", json={"moves": "h2e2 h9g7", "top": 3}).json()
    board = Board.from_moves(["h2e2", "h9g7"])
    assert move["move"] == MoveModel(edgeinfer.load(default_bundle("xiangqi"), device="cpu")).best(board).move
    assert len(move["top"]) == 3 and move["move"] in board.legal_moves()
    fen = "3k5/9/9/9/4r4/9/4p4/9/4R4/4K4 w - - 0 1"  # the pawn on e3 costs the rook
    searched = httpx.post(f"{server.url}/v1/xiangqi/move", json={"fen": fen, "search": True}).json()
    mover = MoveModel(edgeinfer.load(default_bundle("xiangqi"), device="cpu"))
    assert searched["move"] == searched_best(mover, Board(fen)).move != "e1e3"


def test_sigterm_finishes_the_requests_in_flight_then_exits(lively_bundles, gpt):
    server = Server({"gpt": lively_bundles["contrib"]})
    try:
        body = {"model": "gpt", "prompt": [5, 6, 7], "max_tokens": 40, "temperature": 0, "stream": True,
                "ignore_eos": True}
        text = ""
        with httpx.Client(base_url=server.url, timeout=30) as client, \
                client.stream("POST", "/v1/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    if not text:
                        os.kill(server.process.pid, signal.SIGTERM)
                    text += json.loads(line[6:])["choices"][0]["text"]
        assert text == gpt.decode(_alone(gpt, [5, 6, 7], 40))
        assert server.process.wait(15) in (0, -signal.SIGTERM)  # uvicorn exits by the signal it drained on
    finally:
        server.stop()


@pytest.mark.parametrize("draft", [[], ["--draft", f"chat={default_bundle('chat')}"]], ids=["prompt lookup", "draft"])
def test_speculative_server_gives_the_librarys_greedy_text(lively_bundles, draft):
    """`--speculate 4`: one stream at a time verifies drafts (prompt lookup, or a draft bundle: here the chat bundle
    drafting for itself); the text is plain greedy's."""
    chat = edgeinfer.load(default_bundle("chat"), device="cpu")
    server = Server({"chat": default_bundle("chat")}, "--speculate", "4", *draft)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        for prompt in ("i love to go to the park and i love to go to the", "你好，你好，你好"):
            expected = chat.decode(_alone(chat, chat.encode(prompt), 40))
            got = client.completions.create(model="chat", prompt=prompt, max_tokens=40, temperature=0,
                                            extra_body={"ignore_eos": True})
            assert got.choices[0].text == expected and got.usage.completion_tokens == 40
        drafted, accepted = (_metric(server, f"edgeinfer_{name}_total", "chat") for name in ("draft_tokens",
                                                                                              "accepted_draft_tokens"))
        assert drafted >= accepted > 0  # greedy text that loops: drafts are taken
    finally:
        server.stop()


@pytest.mark.parametrize(("flags", "message"), [
    (["--draft", f"chat={default_bundle('chat')}"], "--draft needs --speculate K"),
    (["--speculate", "2", "--draft", f"nope={default_bundle('chat')}"], "--draft nope: no model of that name"),
    (["--speculate", "2", "--draft", f"chat={default_bundle('qa')}"], "--draft chat: the draft is a bundle for task"),
    (["--speculate", "2", "--draft", f"chat={default_bundle('xiangqi-chars')}"],
     "--draft chat: the draft model reads a bidi"),
    (["--speculate", "2", "--draft", f"chat={default_bundle('xiangqi')}"],
     "--draft chat: the draft is a bundle for task 'xiangqi': a draft must be a text decoder"),
    (["--speculate", "2", "--draft", "chat"], "--draft takes NAME=BUNDLE"),
])
def test_drafts_that_cannot_draft_stop_the_server_before_it_starts(flags, message, capsys):
    code = main(["serve", "--model", f"chat={default_bundle('chat')}", "--device", "cpu", *flags, "--json"])
    assert code == 2 and message in json.loads(capsys.readouterr().out)["error"]


def test_a_served_model_and_its_draft_open_with_idle_threads_that_sleep(monkeypatch):
    """They take turns on the same cores: spinning threads of one would hold up the other."""
    from edgeinfer.serve.app import ServeConfig, load_models

    def spinning(model) -> str | None:
        try:
            return model.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # not set: onnxruntime's default, spinning
            return None

    monkeypatch.delenv("EDGEINFER_ALLOW_SPINNING", raising=False)
    chat = str(default_bundle("chat"))
    models, drafts = load_models(ServeConfig({"chat": chat, "other": chat}, speculate=2, drafts={"chat": chat}))
    assert spinning(models["chat"]) == spinning(drafts["chat"]) == "0" and spinning(models["other"]) != "0"
    assert set(drafts) == {"chat"}
