"""An optional shallow search with the model's move scores as priors: two plies of material, mates found.

The model's own choice (`MoveModel.best`) is what the move model is measured by; this is an extra for applications
that want a stronger player for a few more milliseconds a move. Each legal move gets a value in pawns: a move that
leaves the opponent without a legal move wins at once (mate, or stalemate, also a loss in Xiangqi); otherwise it is
the material the move captures, less the best the opponent can do in one reply - a reply that mates us is a loss,
and a capture counts the piece it takes less the piece we can take back on that square. A draw (a third
repetition, by our move or by the reply) costs the side that is ahead its material lead: that side avoids it and
the side behind seeks it. The move's log-probability times `prior_weight` is added, so among moves of equal
material the model's choice stands and it gives way only to a material swing worth more than its confidence. As
in `MoveModel.score`, the repetition rules have the last word: a move that loses by perpetual check or chase is
chosen only when every move does.
"""

from __future__ import annotations

from .board import REPETITION_COUNT, Board
from .mover import MoveModel, ScoredMove, losing_by_repetition
from .tables import ADVISOR, CANNON, ELEPHANT, FILES, HORSE, KING, PAWN, RANKS, ROOK

PIECE_VALUES = {KING: 0.0, ADVISOR: 2.0, ELEPHANT: 2.0, HORSE: 4.0, ROOK: 9.0, CANNON: 4.5, PAWN: 1.0}
CROSSED_PAWN_VALUE = 2.0  # a pawn over the river also moves sideways
MATE = 1000.0
PRIOR_WEIGHT = 0.25  # pawns per nat of log-probability


def searched_best(mover: MoveModel, board: Board, prior_weight: float = PRIOR_WEIGHT) -> ScoredMove:
    """The legal move of highest material value after two plies plus `prior_weight` times its log-probability."""
    return choose_by_search(board, mover.score(board), prior_weight)


def choose_by_search(board: Board, scored: list[ScoredMove], prior_weight: float = PRIOR_WEIGHT) -> ScoredMove:
    """`searched_best` over moves the model has already scored (`MoveModel.score(board)`)."""
    losing = losing_by_repetition(board, [s.move for s in scored])
    lead = material_lead(board)
    return max(scored, key=lambda s: (s.move not in losing,
                                      move_value(board, s.move, lead) + prior_weight * s.logprob))


def move_value(board: Board, move: str, lead: float | None = None) -> float:
    """`move`'s material value in pawns for the side to move, two plies deep. A move that ends the game is worth
    MATE if it wins, -MATE if it loses, and minus the mover's material `lead` if it draws (a draw gives the lead
    up, or saves a side that is behind); so is a reply that draws, from the other side."""
    if lead is None:
        lead = material_lead(board)
    mover, gain = board.turn, captured_value(board, move)
    board.push(move)
    try:
        if (outcome := board.outcome()) is not None:
            return _ending_value(outcome.winner, mover, lead)
        return gain - best_reply_value(board, -(lead + gain))
    finally:
        board.pop()


def best_reply_value(board: Board, lead: float = 0.0) -> float:
    """The most the side to move (ahead by `lead`) gains with one move: MATE if one mates, else its best capture less
    the recapture, or what a third repetition is worth to it."""
    mover, best, may_repeat = board.turn, 0.0, board.may_repeat(1)
    for reply in board.legal_moves():
        gain = captured_value(board, reply)
        board.push(reply)
        try:
            if board.is_check() and not board.legal_moves():
                return MATE
            if may_repeat and board.repetitions() >= REPETITION_COUNT:
                gain = _ending_value(board.outcome().winner, mover, lead)
            elif gain:
                target = reply[2:]
                gain -= max((captured_value(board, back) for back in board.legal_moves() if back[2:] == target),
                            default=0.0)
        finally:
            board.pop()
        best = max(best, gain)
    return best


def _ending_value(winner: str | None, mover: str, lead: float) -> float:
    return -lead if winner is None else MATE if winner == mover else -MATE


def material_lead(board: Board) -> float:
    """The side to move's material less its opponent's, in pawns."""
    own = 1 if board.turn == "red" else -1
    return sum(own * (1 if piece > 0 else -1) * _piece_value(piece, square)
               for square, piece in enumerate(board.squares) if piece)


def captured_value(board: Board, move: str) -> float:
    """The value of the piece `move` captures (0 for a quiet move)."""
    square = int(move[3]) * FILES + "abcdefghi".index(move[2])
    return _piece_value(board.squares[square], square)


def _piece_value(piece: int, square: int) -> float:
    if abs(piece) == PAWN and _crossed(piece, square):
        return CROSSED_PAWN_VALUE
    return PIECE_VALUES.get(abs(piece), 0.0)


def _crossed(pawn: int, square: int) -> bool:
    """Whether a pawn (red's are positive and start on ranks 3-4) stands on the other side of the river."""
    rank = square // FILES
    return rank >= RANKS // 2 if pawn > 0 else rank < RANKS // 2
