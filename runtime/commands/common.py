"""What several subcommands share: opening a bundle of the task a command needs, reading text input, integer options."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from ..bundle import square_pair_head
from ..errors import BundleError, InputError
from ..loader import load

DECODER_TASKS = ("causal-lm", "chat", "xiangqi")


def load_for(command: str, bundle: str | Path, tasks: tuple[str, ...], device: str,
             allow_spinning: bool | None = None):
    """Open `bundle` for `edgeinfer COMMAND`, refusing a bundle of another task.

    Without this a QA bundle given to `generate` would load and then fail on a method it lacks.
    """
    model = load(bundle, device=device, allow_spinning=allow_spinning)
    task = model.manifest["task"]
    if task not in tasks:
        names = [repr(t) for t in tasks]
        needed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise BundleError(f"{bundle} is a bundle for task {task!r}; edgeinfer {command} needs one for task {needed}")
    if tasks == DECODER_TASKS and square_pair_head(model.manifest):
        raise BundleError(f"{bundle} is a Xiangqi bundle whose graph scores square pairs, not a decoder; edgeinfer "
                          f"{command} needs a decoder bundle")
    return model


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of a file, or of standard input for '-'; an InputError naming the file otherwise."""
    name = "standard input" if str(path) == "-" else str(path)
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {name}: {exc.strerror}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{what} {name} is not UTF-8 text: byte {data[exc.start]:#04x} on line {line}") from exc


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum`, refused as a usage error (exit 2) otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse
