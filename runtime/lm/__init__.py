"""edgeinfer.lm: decoding with a decoder bundle (KV cache, every strategy, continuous batching, streaming).

Tasks and servers use only what is exported here: `CausalLM` (what `edgeinfer.load` returns for a decoder
bundle), `Prefix` (a kept prefix to continue or fork), `Generation` and `StreamEvent` (results), and the
request-level `Engine` with its `Request`, `Handle` and `QueueFull`.
"""

from .cache import CapacityError
from .engine import Engine, Handle, QueueFull, Request
from .model import CausalLM
from .options import DecodeOptions, decode_options
from .types import FINISH_REASONS, Generation, Prefix, StreamEvent

__all__ = [
    "FINISH_REASONS",
    "CapacityError",
    "CausalLM",
    "DecodeOptions",
    "Engine",
    "Generation",
    "Handle",
    "Prefix",
    "QueueFull",
    "Request",
    "StreamEvent",
    "decode_options",
]
