"""The Xiangqi move model's 20 tokens: `[PAD]` (also the start token), digits 0-9 and files a-i.

A game is the start token followed by its moves' ICCS characters, one token per character ("h2e2" -> h 2 e 2).
"""

from __future__ import annotations

VOCAB = ["[PAD]", *"0123456789", *"abcdefghi"]
START = 0
TOKEN_ID = {symbol: i for i, symbol in enumerate(VOCAB)}


def encode_moves(moves: list[str]) -> list[int]:
    """[START] + one id per character of each ICCS move."""
    return [START, *(TOKEN_ID[c] for move in moves for c in move)]
