"""Dialogue with a DialoGPT-style bundle: the input layout (`format`) and multi-turn sessions (`Chat`)."""

from .format import encode_dialogue, reply_segment_id, special_ids
from .session import Chat, TidyStream, tidy

__all__ = ["Chat", "TidyStream", "encode_dialogue", "reply_segment_id", "special_ids", "tidy"]
