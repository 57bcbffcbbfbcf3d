"""`edgeinfer chat`: talk with the dialogue model in the terminal, or answer one message."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..chat import Chat
from ..chat.session import longest_reply
from ..errors import InputError
from ..loader import default_bundle
from .common import at_least, load_for, read_text
from .decoding import add_decoding_arguments, decoding_options

HELP = "chat with the dialogue model (interactive; or --once MESSAGE)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", metavar="MESSAGE", default=None, help="answer this one message and exit")
    parser.add_argument("--history", type=Path, default=None,
                        help="earlier turns, oldest first: a JSON list of strings or one utterance per line "
                        "('-': standard input)")
    parser.add_argument("--seed", type=at_least(0), default=None)
    add_decoding_arguments(parser)
    parser.add_argument("--bundle", default=None, help="chat bundle (default: the shipped one)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def read_history(path: Path | None) -> list[str]:
    if path is None:
        return []
    text = read_text(path, "history file")
    if text.lstrip().startswith("["):
        try:
            turns = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InputError(f"history file {path} is not valid JSON: {exc}") from exc
        if not all(isinstance(t, str) for t in turns):
            raise InputError(f"history file {path} must hold a list of strings")
        return turns
    return [line for line in text.splitlines() if line.strip()]


def run(args: argparse.Namespace) -> tuple[dict, str]:
    model = load_for("chat", args.bundle or default_bundle("chat"), ("chat",), args.device)
    if args.max_new_tokens is not None and args.max_new_tokens > longest_reply(model):
        raise InputError(f"--max-new-tokens {args.max_new_tokens} leaves no room for the conversation: this model's "
                         f"context is {model.max_positions} tokens, so --max-new-tokens can be at most "
                         f"{longest_reply(model)}")
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
        except EOFError:  # end of input (Ctrl-D, or a closed pipe): leave like /quit
            print()
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
