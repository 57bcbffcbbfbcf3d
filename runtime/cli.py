"""The `edgeinfer` console script.

Each subcommand lives in its own module under `edgeinfer.commands` and exposes
`HELP` (one line), `add_arguments(parser)` and `run(args) -> (result, text)`:
`result` is a JSON-serialisable dict printed with `--json`, `text` is what a person reads.
Heavy imports (torch for `export`) happen inside `run`, so `--help` stays fast.

Exit status: 0 done; 2 refused (an `EdgeInferError`, or a usage error), with one line on stderr, or one JSON
object `{"error", "kind"}` on stdout with `--json`; 130 interrupted (Ctrl-C); 141 the reader of stdout went away
(`| head`), as for a program killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import io
import json
import os
import re
import sys
from importlib import metadata
from typing import NoReturn

from . import __version__
from .errors import EdgeInferError

SUBCOMMANDS = ["export", "info", "generate", "chat", "perft", "move", "play", "qa", "cloze", "serve", "bench"]
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
BROKEN_PIPE = 141  # 128 + SIGPIPE


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as the same JSON object as other errors when `json_errors` is set."""

    def __init__(self, *args, json_errors: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.json_errors = json_errors

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            print(json.dumps({"error": f"{self.prog}: {message}", "kind": "UsageError"}, ensure_ascii=False))
            sys.exit(2)
        super().error(message)


def package_version() -> str:
    """The installed distribution's version (what pip reports); the source tree's when it is not installed."""
    try:
        return metadata.version("edgeinfer")
    except metadata.PackageNotFoundError:
        return __version__


def build_parser(json_errors: bool = False) -> argparse.ArgumentParser:
    parser = Parser(prog="edgeinfer", description=__doc__.splitlines()[0], json_errors=json_errors)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(Parser, json_errors=json_errors))
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"edgeinfer.commands.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    tolerate_undecodable_text()
    try:
        code = run_command(argv)
        sys.stdout.flush()  # here, not at exit: a closed pipe must fail where it is caught
        return code
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:
        # Python's recipe: point stdout at devnull, so the interpreter's own flush at exit cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE


def tolerate_undecodable_text() -> None:
    """Bytes that are not UTF-8 (in arguments, file names, typed lines) reach Python as lone surrogates, which a
    UTF-8 locale's stdout refuses to print and its stdin to read: print them escaped, as stderr does, and read them
    as Python does under the C locale, so they end as refusals naming them rather than UnicodeErrors."""
    for stream, errors in ((sys.stdin, "surrogateescape"), (sys.stdout, "backslashreplace")):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=errors)


def one_line(message: str) -> str:
    """A refusal is one line on stderr; a message that quotes another library's error may span several."""
    return re.sub(r"\s*\n\s*", " ", message.strip())


def run_command(argv: list[str]) -> int:
    """Parse, run one subcommand and print its result or its refusal; the exit status."""
    args = build_parser(json_errors="--json" in argv).parse_args(argv)
    try:
        result, text = args._module.run(args)
    except EdgeInferError as exc:
        if args.json:
            print(json.dumps({"error": str(exc), "kind": type(exc).__name__}, ensure_ascii=False))
        else:
            print(f"edgeinfer {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif text:
        print(text)
    return 0
