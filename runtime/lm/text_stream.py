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
        self.text = ""  # everything handed out so far
        self._tokens: list[int] = []  # the window: context tokens already shown, then the tokens not shown yet
        self._shown = 0  # how many of the window's tokens are context

    def push(self, token: int) -> str:
        """Add a token; return the text it completes ("" while a character or word piece is still open)."""
        self._tokens.append(token)
        delta = self._unshown_text()
        return self._advance(delta) if delta and not delta.endswith(REPLACEMENT) else ""

    def flush(self) -> str:
        """The text still held back (a half character at the end of a reply comes out as U+FFFD)."""
        return self._advance(self._unshown_text()) if self._shown < len(self._tokens) else ""

    def _unshown_text(self) -> str:
        """What the window decodes to beyond its context (decoded with it, so word pieces join correctly)."""
        context = self.tokenizer.decode(self._tokens[: self._shown])
        return self.tokenizer.decode(self._tokens)[len(context) :]

    def _advance(self, delta: str) -> str:
        """Hand out `delta`: the tokens just shown become the next window's context."""
        self._tokens = self._tokens[self._shown :]
        self._shown = len(self._tokens)
        self.text += delta
        return delta
