"""The Xiangqi move model's 36 tokens and how a position becomes its prompt.

Tokens: `[PAD]` (also the start token), digits 0-9 and files a-i (a move is its 4 ICCS characters, "h2e2" -> h 2 e 2),
then one token per square content: the 7 piece kinds of the side to move (written as red's pieces, 帥仕相傌俥炮兵),
empty ("·"), and the 7 of the other side (written as black's, 將士象馬車砲卒), and last `[SEEN]`, the start token of a
position that has occurred before in the game.

A position's prompt is the start token and its 90 squares, rank 0 to 9, file a to i, always seen from the side to
move: when black moves, the board is flipped top to bottom with the colours swapped, and the ranks of moves are
flipped the same way (rank r <-> 9 - r). Xiangqi is symmetric under that flip, so the model learns one side's play
and uses it for both. The legal move's characters follow the prompt. Of the game's history the prompt holds one
fact, whether the position is a repeat (`[SEEN]`): where its usual move would go round the same cycle again (a
third repetition draws), the model can learn to play another. A bundle whose vocabulary stops before `[SEEN]`
(`HISTORYLESS_VOCAB`) always gets `[PAD]`.
"""

from __future__ import annotations

from .tables import BLACK, FILES, RANKS

MOVE_SYMBOLS = ["[PAD]", *"0123456789", *"abcdefghi"]
START = 0
PIECE_OFFSET = len(MOVE_SYMBOLS) + 7  # token of square content c (-7..7, own pieces > 0) is PIECE_OFFSET + c
OWN_PIECES = "帥仕相傌俥炮兵"  # king, advisor, elephant, horse, rook, cannon, pawn (tables.KING .. tables.PAWN)
OTHER_PIECES = "將士象馬車砲卒"
VOCAB = [*MOVE_SYMBOLS, *reversed(OTHER_PIECES), "·", *OWN_PIECES, "[SEEN]"]
HISTORYLESS_VOCAB = VOCAB[:-1]
SEEN = len(VOCAB) - 1  # start token of a repeated position
TOKEN_ID = {symbol: i for i, symbol in enumerate(VOCAB)}
PROMPT_TOKENS = 1 + FILES * RANKS
# The left-right mirror (files a <-> i), a symmetry of the rules: each token under it (a move's file characters swap),
# and which prompt token each prompt token's square mirrors to (the start token stays first).
FILE_SYMBOLS = MOVE_SYMBOLS[-FILES:]  # "a" .. "i"
MIRRORED_TOKEN = [TOKEN_ID[FILE_SYMBOLS[FILES - 1 - FILE_SYMBOLS.index(s)]] if s in FILE_SYMBOLS else i
                  for i, s in enumerate(VOCAB)]
MIRRORED_PROMPT = [0, *(1 + rank * FILES + FILES - 1 - file for rank in range(RANKS) for file in range(FILES))]
MIRRORED_SQUARE = [i - 1 for i in MIRRORED_PROMPT[1:]]  # square rank * 9 + file -> its mirror's index


def oriented_values(values: list[int], side: int) -> list[int]:
    """Per-square values in the order `side` sees the board (a new list): its back rank first."""
    if side != BLACK:
        return list(values)
    return [values[(RANKS - 1 - sq // FILES) * FILES + sq % FILES] for sq in range(FILES * RANKS)]


def oriented_squares(squares: list[int], side: int) -> list[int]:
    """The 90 square contents seen from `side` (a new list): its own pieces positive, its back rank first."""
    oriented = oriented_values(squares, side)
    return oriented if side != BLACK else [-piece for piece in oriented]


def board_tokens(squares: list[int], side: int, seen: bool = False) -> list[int]:
    """The prompt of a position: [START] ([SEEN] if it has occurred before) + 90 square tokens, seen from `side`
    (the side to move)."""
    return [SEEN if seen else START, *(PIECE_OFFSET + piece for piece in oriented_squares(squares, side))]


def oriented_move(move: str, side: int) -> str:
    """An ICCS move as the side to move sees it (ranks flipped for black); its own inverse."""
    if side != BLACK:
        return move
    return f"{move[0]}{RANKS - 1 - int(move[1])}{move[2]}{RANKS - 1 - int(move[3])}"


def mirrored_prompt(values: list[int]) -> list[int]:
    """A prompt's per-token values (tokens or segments: the start token's, then the 90 squares') for the position
    mirrored left to right."""
    return [values[i] for i in MIRRORED_PROMPT]


def move_tokens(move: str) -> list[int]:
    return [TOKEN_ID[c] for c in move]


def square_pair(move: str) -> int:
    """An ICCS move as the index of its (from, to) square pair, from * 90 + to, squares numbered rank * 9 + file:
    where a square-pair move head (`square_pairs.py`) keeps its logit."""
    origin = int(move[1]) * FILES + FILE_SYMBOLS.index(move[0])
    target = int(move[3]) * FILES + FILE_SYMBOLS.index(move[2])
    return origin * FILES * RANKS + target
