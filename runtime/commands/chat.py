"""`edgeinfer chat`: talk with the dialogue model in the terminal, or answer one message."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..chat import Chat
from ..errors import InputError
from ..loader import default_bundle, load
from .decoding import add_decoding_arguments, decoding_options

HELP = "chat with the dialogue model (interactive; or --once MESSAGE)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", metavar="MESSAGE", default=None, help="answer this one message and exit")
    parser.add_argument("--history", type=Path, default=None,
                        help="earlier turns, oldest first: a JSON list of strings or one utterance per line")
    parser.add_argument("--seed", type=int, default=None)
    add_decoding_arguments(parser)
    parser.add_argument("--bundle", default=None, help="chat bundle (default: the shipped one)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def read_history(path: Path | None) -> list[str]:
    if path is None:
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read history file {path}: {exc.strerror}") from exc
    if text.lstrip().startswith("["):
        try:
            turns = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"history file {path} is not valid JSON: {exc}") from exc
        if not all(isinstance(t, str) for t in turns):
            raise InputError(f"history file {path} must hold a list of strings")
        return turns
    return [line for line in text.splitlines() if line.strip()]


def run(args: argparse.Namespace) -> tuple[dict, str]:
    model = load(args.bundle or default_bundle("chat"), device=args.device)
    chat = Chat(model, seed=args.seed, history=read_history(args.history), **decoding_options(args))
    if args.once is not None:
        reply = chat.reply(args.once)
        return {"reply": reply, "history": chat.history}, reply
    return interactive(chat), ""


def interactive(chat: Chat) -> dict:
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    print("type a message; /reset forgets the conversation, /quit leaves")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if line == "/quit":
            break
        if line == "/reset":
            chat.reset()
            print("(conversation forgotten)")
            continue
        if not line:
            continue
        sys.stdout.write("bot> ")
        try:
            for piece in chat.stream(line):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except InputError as exc:
            sys.stdout.write(f"(not sent: {exc})")
        sys.stdout.write("\n")
    return {"history": chat.history}
