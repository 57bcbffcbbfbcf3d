"""Fuzzed command lines for every subcommand: valid flags mixed with junk values, missing files and bundles of the
wrong kind, run in-process through `edgeinfer.cli.main` with drawn standard input.

Every run must exit 0 or 2 without a traceback; a refusal ends with one `edgeinfer ...: error: ...` line on stderr,
or with `--json` one `{"error", "kind"}` object on stdout, and `--json` output is JSON. `serve` and `bench` always
carry a value they must refuse before starting (starting them fails the test); `perft` goes 2 plies deep at most.
A small sample runs as real processes with a strict UTF-8 stdout, with arguments that are not UTF-8.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fuzzing import PROFILES, TRICKY_TEXT, fuzz, rarely
from hypothesis import strategies as st

from edgeinfer.cli import main
from edgeinfer.commands import bench, serve
from edgeinfer.loader import BUNDLES
from edgeinfer.xiangqi import START_FEN, Board

ROOT = Path(__file__).resolve().parent.parent
CHAT, QA, XIANGQI, XIANGQI_CHARS = (str(BUNDLES / name) for name in ("chat", "qa", "xiangqi", "xiangqi-chars"))
REFUSAL = re.compile(r"^edgeinfer(?: [\w-]+)?: error: ")
FENS = [START_FEN, *(Path(__file__).parent / "data" / "xiangqi_positions.txt").read_text().splitlines()[1:4]]
# text a user may type, or paste, or that arrives from bytes that were not UTF-8 (lone surrogates)
WORDS = [*TRICKY_TEXT, "你好", "hello world", "床前明月光是谁写的", "李白是诗人。", "--json", "-1"]
INTS = ["0", "1", "2", "3", "-1", "x", "", "1.5", "99999999999999999999999", "-99999999999999999999", "\uff13",
        "\u00b2", "1e3", " 2"]
FLOATS = ["0.5", "1", "0", "-1", "nan", "inf", "-inf", "1e-300", "1e999", "x", ""]
DEVICES = ["cpu", "auto", "cuda", "gpu", ""]
# the words a command reads as text (it refuses a lone surrogate)
TEXT_WORDS = [w for w in WORDS if w.encode("utf-8", "surrogatepass").decode("utf-8", "ignore") == w]


Pool = tuple[st.SearchStrategy, st.SearchStrategy]  # (values a command takes, junk)


def pool(good: list | st.SearchStrategy, junk: list | st.SearchStrategy = ()) -> Pool:
    """(what a command accepts, junk), each from a list of values or a strategy."""
    return tuple(v if isinstance(v, st.SearchStrategy) else st.sampled_from(v) if v else st.nothing()
                 for v in (good, junk))


def fens() -> Pool:
    """Positions; and positions with one character changed or cut short, and junk."""
    broken = st.tuples(st.sampled_from(FENS), st.integers(0, 80), st.sampled_from([*"9/rkRK0 -wb", "\u00b2", ""]))
    return st.sampled_from(FENS), st.one_of(broken.map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]),
                                            st.sampled_from(WORDS))


def games() -> Pool:
    """Moves of a game from the start (legal ones, picked by drawn indices); junk moves."""
    def play(choices: list[int]) -> str:
        board = Board()
        for choice in choices:
            moves = board.legal_moves()
            if not moves:
                break
            board.push(moves[choice % len(moves)])
        return " ".join(board.move_stack)

    return st.lists(st.integers(0, 999), max_size=12).map(play), st.sampled_from(
        [*WORDS, "h2e2 h2e2", "h2e2 zz", "H2E2", "h\u0662e\u0662"])


def stdin_lines() -> st.SearchStrategy[bytes]:
    """What a person or a pipe sends: lines of text, commands, moves, bytes that are not UTF-8, or nothing."""
    line = st.one_of(st.sampled_from(["/reset", "/quit", "moves", "undo", "quit", "h2e2", "b0c2", "", "你好"]),
                     st.sampled_from(WORDS)).map(lambda w: w.encode("utf-8", "surrogateescape"))
    return st.lists(st.one_of(line, st.just(b"\xff\xfe")), max_size=3).map(lambda lines: b"".join(
        w + b"\n" for w in lines))


def command(name: str, positional: list[Pool], flags: dict[str, Pool | None], required: tuple[str, ...] = (),
            poison: dict[str, st.SearchStrategy] | None = None) -> st.SearchStrategy[list[str]]:
    """argv of one subcommand: its positionals, its required flags and up to four others (None: a switch).

    Half the command lines take their values from what the command accepts; the others from that and junk, and now
    and then lose a required flag or gain an unknown one. With `poison`, a flag comes last with a value that must
    be refused (the command would otherwise start a server or a long job).
    """
    @st.composite
    def build(draw) -> list[str]:
        clean = draw(st.booleans())

        def value(choices: Pool) -> str:
            return draw(choices[0] if clean else st.one_of(*choices))

        argv = [name, *(value(p) for p in positional)]
        chosen = [*required, *draw(st.lists(st.sampled_from(sorted(flags)), unique=True, max_size=4))]
        if required and not clean and rarely(draw, 6):
            chosen.remove(required[0])
        for flag in dict.fromkeys(chosen):
            argv += [flag] if flags[flag] is None else [flag, value(flags[flag])]
        if not clean and rarely(draw, 8):
            argv.append(draw(st.sampled_from(["--bogus", "extra", "--json=1"])))
        if poison:
            flag = draw(st.sampled_from(sorted(poison)))
            argv += [flag, draw(poison[flag])]
        return argv

    return build()


@pytest.fixture(scope="module")
def places(tmp_path_factory, gpt2_bundles) -> dict[str, str]:
    """Paths the command lines name: bundles of every kind, files of every sort, and things that are not there."""
    root = tmp_path_factory.mktemp("cli")
    files = {
        "history.json": '["你好", "在吗"]', "numbers.json": "[1, 2]", "deep.json": "[" * 50_000,
        "object.json": '{"a": "b"}', "lines.txt": "你好\n\n在吗\n", "empty.txt": "",
        "good.jsonl": json.dumps({"question": "谁写了静夜思", "context": "《静夜思》是李白写的诗。"}) + "\n",
        "mixed.jsonl": '{"question": "q", "passages": ["李白"]}\nnot json\n[1]\n{"question": 5, "context": "c"}\n',
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    (root / "latin1.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    checkpoints = {"not-json": "{", "list": "[]", "bert": '{"model_type": "bert"}', "gpt2-without-weights":
                   '{"model_type": "gpt2"}', "odd-type": '{"model_type": [1]}', "odd-field":
                   '{"model_type": "gpt2", "n_layer": "x"}', "junk-weights": '{"model_type": "gpt2"}'}
    for name, text in checkpoints.items():
        (root / name).mkdir()
        (root / name / "config.json").write_text(text)
    (root / "junk-weights" / "model.safetensors").write_bytes(b"junk")
    (root / "folder").mkdir()
    paths = {name: str(root / name) for name in [*files, "latin1.txt", *checkpoints, "folder"]}
    return paths | {"gpt2": str(gpt2_bundles["standard"]), "missing": str(root / "missing"), "out": str(root / "out")}


def command_lines(places: dict[str, str]) -> st.SearchStrategy[list[str]]:
    """argv for any subcommand; serve and bench always with one value they must refuse before starting."""
    def bundle(*good: str) -> Pool:
        others = [CHAT, QA, XIANGQI, places["gpt2"], places["missing"], places["lines.txt"], places["folder"], ""]
        return pool(list(good), [b for b in others if b not in good])

    json_files = [places[n] for n in ("history.json", "numbers.json", "deep.json", "object.json")]
    other_files = [places[n] for n in ("lines.txt", "empty.txt", "latin1.txt", "missing", "folder")] + ["", "-"]
    decoding = {"--max-new-tokens": pool(["1", "3", "6"], ["0", "-3", "x", "1.5", "253", "300"]), "--greedy": None,
                "--sample": None, "--top-k": pool(["0", "5"], INTS), "--top-p": pool(["0.9", "1"], FLOATS),
                "--temperature": pool(["0.7", "1e-300"], FLOATS), "--repetition-penalty": pool(["1.3"], FLOATS)}
    common = {"--json": None, "--device": pool(["cpu", "auto"], ["cuda", "gpu", ""])}
    words = pool(TEXT_WORDS, WORDS)
    qa = common | {"--bundle": bundle(QA), "--question": words, "--context": words,
                   "--jsonl": pool([places["good.jsonl"], places["mixed.jsonl"], "-"], json_files + other_files),
                   "--top-k": pool(["1", "3"], INTS), "--threshold": pool(["0.1", "0"], FLOATS),
                   "--max-context-chars": pool(["10", "1000"], INTS), "--max-questions": pool(["1", "5"], INTS)}
    return st.one_of(
        command("info", [bundle(CHAT, QA, XIANGQI, XIANGQI_CHARS, places["gpt2"])], common),
        command("generate", [bundle(CHAT, XIANGQI_CHARS, XIANGQI, places["gpt2"])], common | decoding | {
            "--prompt": pool(["1 2 3", "你好", "h2e2"], [*WORDS, "1 x"]),
            "--ids": None, "--seed": pool(["0", "7", "99999999999999999999999"], ["-1", "x"]),
            "--beams": pool(["1", "2", "3"], ["0", "-1", "65", "1000000"]),
            "--speculate": pool(["0", "3"], ["-1", "17", "x"]), "--draft": bundle(CHAT, places["gpt2"])},
                required=("--prompt",)),
        command("chat", [], common | decoding | {"--once": words, "--history": pool(json_files[:1], json_files[1:] +
                                                                                     other_files),
                                                 "--seed": pool(["0", "3"], ["-1", "x"]), "--bundle": bundle(CHAT)}),
        command("perft", [], {"--fen": fens(), "--depth": pool(["0", "1", "2", "\u0662"],
                                                                ["-1", "8", "x", "99999999999999999999", "\u00b2"]),
                              "--divide": None, "--json": None}, required=("--depth",)),
        command("move", [], common | {"--moves": games(), "--fen": fens(), "--top": pool(["1", "3"], INTS),
                                      "--temperature": pool(["0.5", "2"], FLOATS), "--seed": pool(["0", "5"], ["-1"]),
                                      "--search": None, "--bundle": bundle(XIANGQI)}),
        command("play", [], common | {"--side": pool(["red", "black"], ["green"]), "--fen": fens(), "--letters": None,
                                      "--search": None, "--bundle": bundle(XIANGQI)}),
        *(command("qa", [], qa, required=required) for required in (("--question", "--context"), ("--jsonl",))),
        # no masked-LM bundle ships: every bundle here is refused by task, after the options are checked
        command("cloze", [], common | {"--bundle": bundle(places["gpt2"]),
                                       "--pattern": pool(["___满意。", "{text}这是___事。"], ["no slot", "", "___ ___"]),
                                       "--label": pool(["很=positive", "不=negative", "好事=good"], ["x", "=a", "很="]),
                                       "--text": words, "--scoring": pool(["product", "conditional"], ["x"]),
                                       "--jsonl": pool([places["good.jsonl"]], json_files + other_files),
                                       "--batch-size": pool(["1", "8"], INTS)},
                required=("--bundle", "--pattern", "--label")),
        command("export", [], {"--from-hf": pool([places[n] for n in ("not-json", "list", "bert", "gpt2-without-weights",
                                                                        "odd-type", "odd-field", "junk-weights")],
                                                   [places[n] for n in ("missing", "lines.txt", "folder")]),
                               "--out": pool([places["out"]], [""]), "--task": pool(["causal-lm", "qa"], ["x"]),
                               "--attention": pool(["auto", "standard", "contrib", "unfused"], ["x"]),
                               "--gelu": pool(["exact", "tanh"], ["x"]), "--quantize": pool(["none", "int8"], ["x"]),
                               "--tolerance": pool(["0.001"], FLOATS), "--json": None}, required=("--from-hf", "--out")),
        command("serve", [], common | {"--host": pool(["127.0.0.1"]), "--port": pool(["8000"]),
                                       "--model": pool([f"chat={CHAT}"]), "--ray": None, "--replicas": pool(["1"]),
                                       "--speculate": pool(["2"])},
                poison={"--max-active": st.sampled_from(["0", "-1"]), "--max-queue": st.sampled_from(["0", "-5"]),
                        "--port": st.sampled_from(["0", "70000", "-1"]), "--threads": st.sampled_from(["-1", "100000"]),
                        "--model": st.sampled_from(["chat", "=x", "a=", f"a={places['missing']}", f"a={QA}=b"]),
                        "--timeout": st.sampled_from(["0", "-1", "nan"]),
                        "--draft": st.sampled_from(["chat", f"nope={CHAT}", f"chat={QA}", f"chat={places['gpt2']}",
                                                    f"chat={places['missing']}"])}),
        command("bench", [], {"--quick": None, "--update": None, "--jobs": pool(["decode", "qa"]),
                              "--repeats": pool(["1", "2"]), "--omp-wait": pool(["PASSIVE"])},
                poison={"--repeats": st.sampled_from(["0", "-1", "x"]), "--jobs": st.just("nope"),
                        "--omp-wait": st.just("BUSY")}),
    )


def refuse_to_start(*_, **__):
    raise AssertionError("a server or benchmark was started: a value it must refuse got through")


@PROFILES
def test_command_lines_exit_0_or_2_without_a_traceback(places, capsys, monkeypatch, scale):
    monkeypatch.setattr(serve, "serve_on_ray", refuse_to_start)
    monkeypatch.setattr(bench.subprocess, "run", refuse_to_start)
    if importlib.util.find_spec("uvicorn") is not None:  # without it, serve refuses naming its extra
        monkeypatch.setattr("uvicorn.run", refuse_to_start)

    @fuzz(300 * scale, command_lines(places), stdin_lines())
    def check(argv, stdin):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: usage errors, --help
            code = exc.code or 0
        out, err = capsys.readouterr()
        assert code in (0, 2), (code, out, err)
        assert "Traceback" not in out + err
        if "--json" in argv:
            result = json.loads(out.strip().splitlines()[-1])
            assert code == 0 or {"error", "kind"} <= set(result), out
        elif code == 2:
            assert REFUSAL.match(err.strip().splitlines()[-1]), err

    check()


@pytest.mark.parametrize(("argv", "stdin"), [
    (["qa", "--question", b"q\xff", "--context", "李白是诗人。", "--json"], b""),
    (["info", b"/no/such/bundle\xff", "--json"], b""),
    (["info", b"/no/such/bundle\xff"], b""),
    (["chat", "--once", b"\xff\xfe", "--max-new-tokens", "2"], b""),
    (["move", "--moves", b"h2e2 \xff"], b""),
    (["chat", "--max-new-tokens", "2"], b"\xff\xfe\n\xe4\xbd\xa0\xe5\xa5\xbd\n"),
    (["play", "--letters"], b"h\xff2e2\nquit\n"),
])
def test_bytes_that_are_not_utf8_under_a_strict_utf8_locale(argv, stdin):
    """With a UTF-8 locale's strict stdin and stdout, arguments and typed lines that are not UTF-8 raised
    UnicodeEncodeError (printed back) or UnicodeDecodeError (read by input())."""
    done = subprocess.run([sys.executable, "-P", "-m", "edgeinfer", *argv], cwd=ROOT, capture_output=True, input=stdin,
                          timeout=120, check=False, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert done.returncode in (0, 2) and b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    if "--json" in argv:
        json.loads(done.stdout)


@pytest.mark.parametrize("argv", [["serve", "--timeout", "nan"], ["serve", "--timeout", "0"],
                                  ["serve", "--ray", "--threads", "-1", "--model", f"chat={CHAT}"]])
def test_serve_refuses_timeouts_and_thread_counts_before_starting(argv, monkeypatch, capsys):
    """A NaN or zero timeout started a server whose every request timed out; --ray started Ray with -1 threads."""
    monkeypatch.setattr(serve, "serve_on_ray", refuse_to_start)
    if importlib.util.find_spec("uvicorn") is not None:
        monkeypatch.setattr("uvicorn.run", refuse_to_start)
    assert main(argv) == 2
    assert REFUSAL.match(capsys.readouterr().err)


@pytest.mark.parametrize(("config", "weights"), [('{"model_type": [1]}', None),
                                                 ('{"model_type": "gpt2", "n_layer": "x"}', None),
                                                 ('{"architectures": ["GPT2LMHeadModel"]}', None),
                                                 ('{"model_type": "gpt2"}', b"junk")])
def test_export_refuses_checkpoints_it_cannot_read(tmp_path, capsys, config, weights):
    """An unhashable model_type, a config transformers cannot parse and an unreadable weights file raised
    TypeError, ValueError and SafetensorError."""
    (tmp_path / "config.json").write_text(config)
    if weights is not None:
        (tmp_path / "model.safetensors").write_bytes(weights)
    assert main(["export", "--from-hf", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert REFUSAL.match(capsys.readouterr().err.strip().splitlines()[-1])  # transformers' message spans lines
