"""Hostile input to the `edgeinfer` console script: refusals (exit 2, one line naming the problem), never a traceback.

Each case runs the CLI as a real process, as a user or a script would meet it, on the small shipped bundles.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

import edgeinfer
from edgeinfer.chat import Chat
from edgeinfer.errors import BundleError, InputError
from edgeinfer.loader import default_bundle
from edgeinfer.qa.inputs import MAX_CONTEXT_CHARS, MAX_QUESTIONS, check_texts
from edgeinfer.xiangqi.mover import MoveModel

ROOT = Path(__file__).resolve().parent.parent
QA, CHAT, XIANGQI = (default_bundle(name) for name in ("qa", "chat", "xiangqi"))
# the start position with its second rank's '9' written as a superscript two: str.isdigit() holds, int() refuses
SUPERSCRIPT_FEN = "rnbakabnr/²/1c5c1/p1p1p1p1p/9/9/P1P1P1P1P/1C5C1/9/RNBAKABNR w"
# -P: no working folder on sys.path, as with the installed `edgeinfer` script
CLI = [sys.executable, "-P", "-m", "edgeinfer"]


def edgeinfer_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run([*CLI, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False, **kwargs)


def assert_refused(done: subprocess.CompletedProcess, *phrases: str) -> None:
    """Exit 2, no traceback, and every phrase in the one-line message on stderr."""
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, (done.returncode, done.stderr)
    for phrase in phrases:
        assert phrase in done.stderr


@pytest.mark.parametrize(("args", "phrases"), [
    (["generate", QA, "--prompt", "hi"], ["task 'extractive-qa'", "edgeinfer generate needs", "'causal-lm', 'chat'"]),
    (["qa", "--bundle", CHAT, "--question", "q", "--context", "c"], ["task 'chat'", "edgeinfer qa needs",
                                                                    "'extractive-qa'"]),
    (["chat", "--bundle", QA, "--once", "hi"], ["task 'extractive-qa'", "edgeinfer chat needs one for task 'chat'"]),
    (["move", "--bundle", CHAT], ["task 'chat'", "edgeinfer move needs one for task 'xiangqi'"]),
    (["play", "--bundle", QA], ["task 'extractive-qa'", "edgeinfer play needs one for task 'xiangqi'"]),
])
def test_a_bundle_of_another_task_is_refused_by_name(args, phrases):
    assert_refused(edgeinfer_cli(*args), *phrases)


def test_chat_and_moves_refuse_other_bundles_in_the_api_too():
    with pytest.raises(BundleError, match="task 'chat'.*task 'extractive-qa'"):
        Chat(edgeinfer.load(QA, device="cpu"))
    with pytest.raises(BundleError, match="task 'xiangqi'.*task 'chat'"):
        MoveModel(edgeinfer.load(CHAT, device="cpu"))


def test_generate_refuses_ids_that_are_not_integers_and_negative_seeds():
    assert_refused(edgeinfer_cli("generate", CHAT, "--ids", "--prompt", "1 x"), "--ids takes", "'x' is not one")
    assert_refused(edgeinfer_cli("generate", CHAT, "--ids", "--prompt", "1 2", "--seed", "-1"),
                   "argument --seed: must be an integer >= 0, got '-1'")
    assert_refused(edgeinfer_cli("move", "--seed", "-1", "--temperature", "1"), "argument --seed")


def test_non_ascii_digits_in_fen_and_moves_are_input_errors():
    assert_refused(edgeinfer_cli("perft", "--depth", "1", "--fen", SUPERSCRIPT_FEN), "bad FEN", "'²'")
    assert_refused(edgeinfer_cli("move", "--moves", "h\u0662e\u0662"), "malformed move")  # Arabic-Indic twos


def test_files_that_are_not_utf8_are_named(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes('{"question": "q", "context": "caf\u00e9"}\n'.encode("latin-1"))
    assert_refused(edgeinfer_cli("qa", "--jsonl", bad), f"--jsonl file {bad} is not UTF-8 text", "line 1")
    assert_refused(edgeinfer_cli("chat", "--history", bad, "--once", "hi"), "history file", "is not UTF-8 text")
    assert_refused(edgeinfer_cli("qa", "--jsonl", "-", stdin=bad.open("rb")), "standard input is not UTF-8 text")


def test_qa_jsonl_dash_reads_standard_input():
    line = json.dumps({"question": "谁写了静夜思", "context": "《静夜思》是李白写的诗。"}, ensure_ascii=False)
    done = edgeinfer_cli("qa", "--jsonl", "-", input=line + "\n", stdin=None)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["question"] == "谁写了静夜思"


def test_qa_refuses_contexts_over_the_limit_and_names_the_flag(tmp_path):
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"question": "q", "context": "字" * (MAX_CONTEXT_CHARS + 1)}) + "\n", encoding="utf-8")
    done = edgeinfer_cli("qa", "--jsonl", long)
    assert done.returncode == 0, done.stderr  # a bad line is reported in its place; the others are answered
    row = json.loads(done.stdout)
    assert row["kind"] == "InputError" and f"over the limit of {MAX_CONTEXT_CHARS:,}" in row["error"]
    assert "--max-context-chars" in row["error"]
    assert_refused(edgeinfer_cli("qa", "--question", "q", "--context", "0123456789ab", "--max-context-chars", "10"),
                   "has 12 characters, over the limit of 10")


def test_question_count_limit_and_its_override():
    questions = ["q"] * (MAX_QUESTIONS + 1)
    with pytest.raises(InputError, match=f"over the limit of {MAX_QUESTIONS}.*max_questions"):
        check_texts(questions, None, ["c"] * len(questions))
    assert len(check_texts(questions, None, ["c"] * len(questions), max_questions=MAX_QUESTIONS + 1)[0]) == len(questions)


def test_export_refuses_a_folder_that_is_no_checkpoint_before_importing_torch(tmp_path):
    assert_refused(edgeinfer_cli("export", "--from-hf", tmp_path / "missing", "--out", tmp_path / "b"), "is not a folder")
    (tmp_path / "config.json").write_text("{not json")
    assert_refused(edgeinfer_cli("export", "--from-hf", tmp_path, "--out", tmp_path / "b"), "config.json is not valid JSON")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert_refused(edgeinfer_cli("export", "--from-hf", tmp_path, "--out", tmp_path / "b"), "(model_type 'bert')",
                   "(export it with --task qa)", "causal-lm: GPT2LMHeadModel, LlamaForCausalLM, Qwen2ForCausalLM")
    probe = ("import sys\nfrom edgeinfer.cli import main\n"
             f"assert main(['export', '--from-hf', {str(tmp_path)!r}, '--out', 'b']) == 2\n"
             "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_unsupported_gpt2_checkpoint_is_refused_not_crashed(tmp_path, hf_gpt2):
    hf_gpt2.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    assert_refused(edgeinfer_cli("export", "--from-hf", tmp_path, "--out", tmp_path / "b"),
                   "unsupported activation 'relu'")


@pytest.mark.parametrize("args", [["perft", "--depth", "2", "--divide"],
                                  ["qa", "--question", "谁", "--context", "李白是诗人。", "--json"]])
def test_a_closed_pipe_ends_quietly(args):
    """`edgeinfer ... | head -c1`: the reader is gone before the output is written."""
    proc = subprocess.Popen([*CLI, *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141
    assert err == b""


@pytest.mark.parametrize("command", ["chat", "play"])
def test_end_of_input_ends_interactive_commands_cleanly(command):
    done = edgeinfer_cli(command)
    assert done.returncode == 0 and done.stderr == ""


def _read_until(stream, marker: bytes, seconds: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while marker not in seen:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f"no {marker!r} within {seconds} s; got {seen!r}")
            chunk = os.read(stream.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"the process ended before {marker!r}; got {seen!r}")
            seen += chunk
    return seen


def test_ctrl_c_at_the_chat_prompt_exits_130_without_a_traceback():
    # A shell starts background jobs with Ctrl-C ignored, and an ignored SIGINT stays ignored across exec: when the
    # suite runs in the background, handle it here while the child starts, so it starts as a terminal's program does.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([*CLI, "chat"], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        _read_until(proc.stdout, b"you> ", 60)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err


def test_chat_max_new_tokens_over_the_context_is_named_in_the_users_terms():
    assert_refused(edgeinfer_cli("chat", "--max-new-tokens", "300", "--once", "hi"), "--max-new-tokens 300",
                   "context is 256 tokens", "at most 252")


def test_json_errors_for_refusals_and_usage_errors():
    done = edgeinfer_cli("generate", QA, "--prompt", "hi", "--json")
    assert done.returncode == 2 and done.stderr == ""
    error = json.loads(done.stdout)
    assert error["kind"] == "BundleError" and "task 'extractive-qa'" in error["error"]
    done = edgeinfer_cli("qa", "--top-k", "many", "--json")
    assert done.returncode == 2 and done.stderr == ""
    error = json.loads(done.stdout)
    assert error["kind"] == "UsageError" and "argument --top-k: invalid int value: 'many'" in error["error"]
    done = edgeinfer_cli("qa", "--top-k", "many")
    assert done.returncode == 2 and done.stdout == "" and "usage: edgeinfer qa" in done.stderr


def test_version_is_the_installed_distributions():
    done = edgeinfer_cli("--version")
    assert done.returncode == 0 and done.stdout == f"edgeinfer {metadata.version('edgeinfer')}\n"


def test_bench_without_its_extra_fails_at_once_naming_it():
    probe = ("import sys\nsys.modules['matplotlib'] = None  # as if not installed\n"
             "from edgeinfer.cli import main\nsys.exit(main(['bench', '--quick']))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert_refused(done, "edgeinfer[bench]", "matplotlib is missing", "pip install -e '.[bench]'")


def test_without_onnxruntime_loading_names_the_extras():
    probe = ("import sys\nsys.modules['onnxruntime'] = None\nimport edgeinfer\n"
             "from edgeinfer.cli import main\nsys.exit(main(['info', sys.argv[1]]))\n")
    done = subprocess.run([sys.executable, "-c", probe, str(QA)], capture_output=True, text=True, timeout=60, check=False)
    assert_refused(done, "edgeinfer[cpu]", "edgeinfer[gpu]")


def test_qa_question_limit_from_the_command_line(tmp_path):
    two = tmp_path / "two.jsonl"
    line = json.dumps({"question": "谁是蜀国的皇帝？", "context": "刘备是蜀国的皇帝。"}, ensure_ascii=False)
    two.write_text(f"{line}\n{line}\n", encoding="utf-8")
    assert_refused(edgeinfer_cli("qa", "--jsonl", two, "--max-questions", "1"), "over the limit of 1")
    done = edgeinfer_cli("qa", "--jsonl", two, "--max-questions", "2", "--json")
    assert done.returncode == 0, done.stderr
    assert [r["answers"][0]["text"] for r in json.loads(done.stdout)["results"]] == ["刘备"] * 2
