"""What an export tells its user: one stderr line per slow step with its seconds, and nothing from the libraries it
drives.

An export spends seconds in each of a few steps (load the checkpoint, trace, fuse, check parity, write), so the
CLI reports them as they end; library callers (tests, training scripts) get no lines unless they ask with
`reporting()`. Every step silences, for its own duration only, what torch's exporter and transformers' loader print
to anyone who exports: torchvision op registrations, a pytree deprecation, transformers' loading bar and notices.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

_STREAM: ContextVar[TextIO | None] = ContextVar("edgeinfer_export_progress", default=None)

# loggers whose warnings speak of torch's own internals, never of the model being exported
QUIET_LOGGERS = ("torch.onnx", "torch.export", "torch._export")
QUIET_WARNINGS = (
    (FutureWarning, r".*isinstance\(treespec, LeafSpec\)"),  # torch's pytree, raised inside torch.export
)


@contextmanager
def reporting(stream: TextIO | None = None) -> Iterator[None]:
    """Within this block, every export step prints `label ... 1.23 s` to `stream` (default: stderr)."""
    token = _STREAM.set(stream or sys.stderr)
    try:
        yield
    finally:
        _STREAM.reset(token)


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence the known chatter of torch's exporter and transformers' loader, restoring every setting after."""
    import transformers.utils.logging as hf_logging

    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        for category, message in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
            hf_logging.set_verbosity(verbosity)
            if bar:
                hf_logging.enable_progress_bar()


@contextmanager
def step(label: str) -> Iterator[None]:
    """One export step, quiet; when reporting, its label as it starts and its seconds (or `failed`) as it ends."""
    stream = _STREAM.get()
    if stream is not None:
        print(f"{label} ...", end=" ", file=stream, flush=True)
    started = time.perf_counter()
    try:
        with quiet_libraries():
            yield
    except BaseException:
        if stream is not None:
            print("failed", file=stream, flush=True)
        raise
    if stream is not None:
        print(f"{time.perf_counter() - started:.2f} s", file=stream, flush=True)
