"""The `edgeinfer` console script.

Each subcommand lives in its own module under `edgeinfer.commands` and exposes
`HELP` (one line), `add_arguments(parser)` and `run(args) -> (result, text)`:
`result` is a JSON-serialisable dict printed with `--json`, `text` is what a person reads.
Heavy imports (torch for `export`) happen inside `run`, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from .errors import EdgeInferError

SUBCOMMANDS = ["export", "info", "generate", "chat", "perft", "move", "play", "qa", "serve", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeinfer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"edgeinfer.commands.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result, text = args._module.run(args)
    except EdgeInferError as exc:
        if args.json:
            print(json.dumps({"error": str(exc), "kind": type(exc).__name__}, ensure_ascii=False))
        else:
            print(f"edgeinfer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    elif text:
        print(text)
    return 0
