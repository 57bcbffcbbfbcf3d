"""Keep Ctrl-C and SIGTERM for the main thread.

Linux hands a process's signal to its main thread when it can, but some kernels (gVisor among them) pick any
thread. A signal taken by a worker thread (bundle hashing, onnxruntime's thread pool) leaves the main thread
blocked in a read that Ctrl-C should have interrupted. Threads started inside `signals_to_main_thread()` inherit
a mask that blocks these signals, so only the main thread can take them.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

MAIN_THREAD_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextmanager
def signals_to_main_thread() -> Iterator[None]:
    """Start threads inside this block; a signal arriving meanwhile waits and is taken when it ends."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, MAIN_THREAD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
