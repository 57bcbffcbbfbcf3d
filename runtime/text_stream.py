"""Incremental detokenization: the text each new token adds, in constant time per token.

Decoding a whole reply again at every step costs O(length) per token, and slicing the new text at the old
length goes wrong where a character spans tokens: a byte-level BPE gives U+FFFD for a half character, and
the next token replaces it instead of appending. `TextStream` decodes only a short window (the tokens since
the text last grew, plus the ones before them for context) and holds text back while it ends in a half
character, as Hugging Face text-generation-inference does.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.text = ""  # everything handed out so far
        self._prefix = 0  # window start: context tokens already shown
        self._read = 0  # tokens before this are shown

    def push(self, token: int) -> str:
        """Add a token; return the text it completes ("" while a character or word piece is still open)."""
        self.tokens.append(token)
        shown = self.tokenizer.decode(self.tokens[self._prefix : self._read])
        window = self.tokenizer.decode(self.tokens[self._prefix :])
        if len(window) <= len(shown) or window.endswith(REPLACEMENT):
            return ""
        return self._advance(window[len(shown) :])

    def flush(self) -> str:
        """The text still held back (a half character at the end of a reply comes out as U+FFFD)."""
        if self._read == len(self.tokens):
            return ""
        shown = self.tokenizer.decode(self.tokens[self._prefix : self._read])
        window = self.tokenizer.decode(self.tokens[self._prefix :])
        return self._advance(window[len(shown) :])

    def _advance(self, delta: str) -> str:
        self._prefix, self._read = self._read, len(self.tokens)
        self.text += delta
        return delta
