"""Rules engine checks: published perft numbers, agreement with fairy-stockfish (pyffish) on positions
from real self-play games and on how games end, notation round trips, and informative errors for bad input."""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeinfer.commands import perft as perft_command
from edgeinfer.errors import InputError
from edgeinfer.export.xiangqi_data import load_games, split_of
from edgeinfer.xiangqi import (
    NO_CAPTURE_PLIES,
    START_FEN,
    Board,
    Outcome,
    divide,
    iccs_to_uci,
    perft,
    render,
    uci_to_iccs,
)

FIXTURE = Path(__file__).parent / "data" / "xiangqi_positions.txt"
ENGINE_GAMES = Path(__file__).parent / "data" / "xiangqi_engine_games.txt"
CYCLES = Path(__file__).parent / "data" / "xiangqi_cycles.txt"
SMOTHERED_MATE = "rnbakabnr/4c4/5N3/p1p3pCp/9/P8/2P3P1P/8R/9/R1BAKABN1 b - - 5 10"
STALEMATE = "3k5/4R4/9/9/3P5/9/9/4B4/3K5/9 b - - 4 83"
# Hand-made endings as (FEN, ICCS moves); each is also checked against pyffish below.
PERPETUAL_CHECK = ("3k5/8R/9/9/9/9/9/9/9/4K4 w - - 0 1", "i8i9 d9d8 i9i8 d8d9 i8i9 d9d8 i9i8 d8d9")
PERPETUAL_CHASE = ("5k3/9/3c5/9/9/9/9/9/9/2R1K4 w - - 0 1", "c0d0 d7c7 d0c0 c7d7 c0d0 d7c7 d0c0 c7d7")
NO_CAPTURE = ("3k5/9/9/9/9/9/9/9/R8/4K4 w - - 98 60", "a1a2 d9d8")
CHECKS_EXTEND = ("4k4/9/9/9/9/9/9/9/9/RR1K5 w - - 76 80",
                 ("a0a9 e9e8 a9a8 e8e9 a8a9 e9e8 a9e9 e8f8 e9f9 f8e8 f9f8 e8e9 f8f9 e9e8 b0b8 e8e7 b8b7 e7e8 f9f8 "
                  "e8e9 f8e8 e9f9 e8e9 f9f8 e9e8 f8f9 e8e3 f9f8 b7b1 f8f9"))
HAND_MADE = (PERPETUAL_CHECK, PERPETUAL_CHASE, NO_CAPTURE, CHECKS_EXTEND)


def data_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


def fixture_fens() -> list[str]:
    return data_lines(FIXTURE)


def sf_moves(sf, fen: str) -> list[str]:
    return sorted(uci_to_iccs(m) for m in sf.legal_moves("xiangqi", fen, []))


# ---- perft -------------------------------------------------------------------

@pytest.mark.parametrize(("depth", "nodes"), [(0, 1), (1, 44), (2, 1920), (3, 79666)])
def test_perft_start_position(depth: int, nodes: int) -> None:
    assert perft(START_FEN, depth) == nodes


@pytest.mark.slow
def test_perft_start_position_depth_4() -> None:
    assert perft(Board(), 4) == 3290240


def test_divide_sums_to_perft_and_leaves_board_unchanged() -> None:
    board = Board()
    split = divide(board, 2)
    assert len(split) == 44 and sum(split.values()) == 1920
    assert split["h2e2"] == 45  # same count as pyffish after the central cannon h3e3
    assert board.fen() == START_FEN


def test_perft_matches_pyffish_on_game_positions() -> None:
    sf = pytest.importorskip("pyffish")
    for fen in fixture_fens()[::150]:
        expected = sum(len(sf.legal_moves("xiangqi", fen, [m])) for m in sf.legal_moves("xiangqi", fen, []))
        assert perft(fen, 2) == expected, fen


def test_perft_command() -> None:
    parser = argparse.ArgumentParser()
    perft_command.add_arguments(parser)
    result, text = perft_command.run(parser.parse_args(["--depth", "2", "--divide"]))
    assert result["nodes"] == 1920 and result["depth"] == 2 and result["fen"] == START_FEN
    assert result["divide"]["b2e2"] == 45 and "perft(2) = 1920" in text
    for depth in ("-1", "8"):
        with pytest.raises(InputError, match="--depth must be between 0 and 7"):
            perft_command.run(parser.parse_args(["--depth", depth]))


# ---- cross-check against fairy-stockfish on real game positions ----------------

def test_fixture_is_large_enough() -> None:
    fens = fixture_fens()
    assert len(fens) >= 2000 and len(set(fens)) == len(fens)


def test_legal_moves_and_check_match_pyffish() -> None:
    sf = pytest.importorskip("pyffish")
    checks = 0
    for fen in fixture_fens():
        board = Board(fen)
        assert board.legal_moves() == sf_moves(sf, fen), fen
        assert board.is_check() == sf.gives_check("xiangqi", fen, []), fen
        checks += board.is_check()
    assert checks >= 20  # the comparison covers positions in check, not only quiet ones


def test_checking_moves_match_pyffish() -> None:
    sf = pytest.importorskip("pyffish")
    checks, mates = 0, 0
    for fen in fixture_fens()[::16]:
        expected = {}
        for move in Board(fen).legal_moves():
            uci = iccs_to_uci(move)
            if sf.gives_check("xiangqi", fen, [uci]):
                expected[move] = not sf.legal_moves("xiangqi", fen, [uci])
        assert Board(fen).checking_moves() == expected, fen
        checks, mates = checks + len(expected), mates + sum(expected.values())
    assert checks >= 100 and mates >= 3  # checks and mates both met


def test_checking_moves_equal_playing_each_move() -> None:
    rng, positions = random.Random(3), 0
    for _ in range(12):
        board = Board(max_plies=None)
        while (moves := board.legal_moves()) and positions < 1500:
            expected = {}
            for move in moves:
                board.push(move)
                if board.is_check():
                    expected[move] = not board.legal_moves()
                board.pop()
            assert board.checking_moves() == expected, board.fen()
            positions += 1
            board.push(rng.choice(moves))
    assert positions == 1500


def test_no_legal_move_outcomes_match_pyffish() -> None:
    sf = pytest.importorskip("pyffish")
    reasons = set()
    for fen in fixture_fens():
        board = Board(fen, max_plies=None)
        if board.legal_moves():
            continue
        outcome = board.outcome()
        assert sf.game_result("xiangqi", fen, []) == -sf.VALUE_MATE, fen  # side to move loses
        assert outcome.winner == ("black" if board.turn == "red" else "red")
        assert outcome.reason == ("checkmate" if board.is_check() else "stalemate")
        reasons.add(outcome.reason)
    assert reasons == {"checkmate", "stalemate"}


def test_fen_round_trip_on_fixture() -> None:
    for fen in fixture_fens():
        assert Board(fen).fen() == fen


# ---- notation ------------------------------------------------------------------

def test_fen_input_variants() -> None:
    assert Board("rheakaehr/9/1c5c1/p1p1p1p1p/9/9/P1P1P1P1P/1C5C1/9/RHEAKAEHR r").fen() == START_FEN
    assert Board("rnbakabnr/9/1c5c1/p1p1p1p1p/9/9/P1P1P1P1P/1C5C1/9/RNBAKABNR").turn == "red"


@pytest.mark.parametrize(("iccs", "uci"), [("h2e2", "h3e3"), ("a9a8", "a10a9"), ("e0e1", "e1e2"), ("b9c7", "b10c8")])
def test_iccs_uci_conversion(iccs: str, uci: str) -> None:
    assert iccs_to_uci(iccs) == uci
    assert uci_to_iccs(uci) == iccs


@pytest.mark.parametrize("bad", ["h2e", "j2e2", "a0a10", ""])
def test_bad_iccs_uci_raise(bad: str) -> None:
    with pytest.raises(InputError, match="malformed"):
        iccs_to_uci(bad)
    with pytest.raises(InputError, match="malformed"):
        uci_to_iccs(bad.replace("0", "11"))


# ---- errors --------------------------------------------------------------------

@pytest.mark.parametrize(("fen", "message"), [
    ("", "empty"),
    ("rnbakabnr/9/1c5c1/p1p1p1p1p/9/9/P1P1P1P1P/1C5C1/9 w", "9 ranks, expected 10"),
    ("rnbakabnr1/9/1c5c1/p1p1p1p1p/9/9/P1P1P1P1P/1C5C1/9/RNBAKABNR w", "rank 9 has 10 files"),
    ("rnbakabnr/9/1c5c1/p1p1p1p1p/9/9/P1P1P1P1P/1C5C1/9/RNBAKAB w", "rank 0 has 7 files"),
    ("rnbakabnr/9/1c5c1/p1p1p1p1p/9/9/P1P1P1P1P/1C5C1/9/RNBA1ABNR w", "red has no king"),
    ("rnbakabnr/9/1c5c1/p1p1p1p1p/9/9/P1P1P1P1P/1C5C1/9/RNBAKABNX w", "unknown piece letter 'X'"),
    ("rnbakabnr/9/1c5c1/p1p1p1p1p/9/9/P1P1P1P1P/1C5C1/9/RNBAKABNR x", "side to move 'x'"),
    ("4k4/9/9/9/9/9/9/9/9/4K4 b", "two kings face each other with black to move"),
    ("3k5/9/9/9/9/4B4/9/9/9/4K4 w", "red elephant on e4 is on a square no elephant can reach"),
    ("3k5/9/9/9/9/9/9/9/9/3K1K3 w", "red has 2 kings, at most 1"),
    ("3k5/9/9/9/9/9/1P7/9/9/4K4 w", "red pawn on b3 is on a square no pawn can reach"),
    ("3k5/9/9/9/RRR6/9/9/9/9/4K4 w", "red has 3 rooks, at most 2"),
    ("3k5/9/9/9/9/9/9/9/3R5/4K4 w", "black is in check but red is to move"),
    ("rnbakabnr/9/1c5c1/p1p1p1p1p/9/9/P1P1P1P1P/1C5C1/9/RNBAKABNR w - - x 1", "not integers"),
])
def test_bad_fen_raises_with_reason(fen: str, message: str) -> None:
    with pytest.raises(InputError, match="bad FEN") as info:
        Board(fen)
    assert message in str(info.value)


@pytest.mark.parametrize(("fen", "move", "message"), [
    (START_FEN, "hello", "malformed move 'hello'"),
    (START_FEN, "h2h10", "square 'h10' is off the board"),
    (START_FEN, "j2e2", "square 'j2' is off the board"),
    (START_FEN, "e5e6", "there is no piece on e5"),
    (START_FEN, "h7e7", "is a black cannon but red is to move"),
    (START_FEN, "h2h8", "a red cannon cannot move from h2 to h8"),
    (START_FEN, "a0b0", "b0 is occupied by red's own horse"),
    (START_FEN, "c0e4", "a red elephant cannot move from c0 to e4"),
    ("3k5/9/9/9/9/4r4/9/9/4R4/4K4 w", "e1d1", "would leave red's king in check"),
    ("4k4/9/9/4P4/9/9/9/9/9/4K4 w", "e6d6", "two kings facing each other"),
])
def test_illegal_move_raises_with_reason(fen: str, move: str, message: str) -> None:
    board = Board(fen)
    with pytest.raises(InputError) as info:
        board.push(move)
    assert message in str(info.value)
    assert board.fen() == Board(fen).fen()  # a rejected move leaves the board untouched


def test_pop_on_empty_stack_raises() -> None:
    with pytest.raises(InputError, match="no move to take back"):
        Board().pop()


# ---- make/unmake, game end ---------------------------------------------------------

def test_push_pop_restores_exact_fen() -> None:
    for fen in fixture_fens()[::10]:
        board = Board(fen)
        for move in board.legal_moves():
            board.push(move)
            assert board.pop() == move
            assert board.fen() == fen
            assert board.repetitions() == 1


def test_from_moves_and_move_stack() -> None:
    moves = "h2e2 h9g7 h0g2 i9h9"
    board = Board.from_moves(moves)
    assert board.move_stack == moves.split()
    assert board.fen() == "rnbakabr1/9/1c4nc1/p1p1p1p1p/9/9/P1P1P1P1P/1C2C1N2/9/RNBAKAB1R w - - 4 3"
    for _ in range(4):
        board.pop()
    assert board.fen() == START_FEN


def test_mate_and_stalemate_lose_for_side_to_move() -> None:
    mate = Board(SMOTHERED_MATE).outcome()
    assert (mate.winner, mate.reason, mate.result) == ("red", "checkmate", "1-0")
    stale = Board(STALEMATE)
    assert not stale.is_check()
    assert (stale.outcome().winner, stale.outcome().reason) == ("red", "stalemate")


def test_third_repetition_without_check_or_chase_draws() -> None:
    board = Board()
    shuffle = ["b0c2", "b9c7", "c2b0", "c7b9"]
    for move in shuffle:
        board.push(move)
    assert board.repetitions() == 2 and board.outcome() is None
    for move in shuffle:
        board.push(move)
    assert board.repetitions() == 3
    assert board.outcome() == Outcome(None, "repetition") and board.outcome().result == "1/2-1/2"


def play_all_but_last(ending: tuple[str, str]) -> tuple[Board, str]:
    """The board one ply before `ending` ends, and that last move."""
    fen, moves = ending
    *before, last = moves.split()
    return Board.from_moves(before, fen=fen), last


def test_perpetual_check_loses_for_the_checker() -> None:
    board, last = play_all_but_last(PERPETUAL_CHECK)
    assert board.outcome() is None
    board.push(last)  # the start position for the 3rd time; red checked on every move
    assert board.repetitions() == 3
    assert board.outcome() == Outcome("black", "perpetual_check")


def test_perpetual_chase_loses_for_the_chaser() -> None:
    board, last = play_all_but_last(PERPETUAL_CHASE)
    assert board.outcome() is None
    board.push(last)  # the rook attacked the lone cannon on every move
    assert board.outcome() == Outcome("black", "perpetual_chase")


def test_no_capture_limit_ends_exactly_at_the_boundary_ply() -> None:
    board, last = play_all_but_last(NO_CAPTURE)
    assert board.halfmove == NO_CAPTURE_PLIES - 1 and board.outcome() is None
    board.push(last)
    assert board.halfmove == NO_CAPTURE_PLIES
    assert board.outcome() == Outcome(None, "no_capture")


def test_capture_resets_the_no_capture_count() -> None:
    board = Board.from_moves("a1a2 d9d8", fen=NO_CAPTURE[0].replace("9/R8", "p8/R8"))  # a1a2 now takes a pawn
    assert board.halfmove == 1 and board.outcome() is None
    board.pop()
    board.pop()
    assert board.halfmove == NO_CAPTURE_PLIES - 2  # unmake restores the count


def test_checks_extend_the_no_capture_limit() -> None:
    fen, moves = CHECKS_EXTEND
    board = Board.from_moves(moves.split()[:24], fen=fen)
    assert board.halfmove == NO_CAPTURE_PLIES and board.outcome() is None  # red checked 12 times: 4 more plies
    board, last = play_all_but_last(CHECKS_EXTEND)
    assert board.outcome() is None  # 13 checks, all within the last 100 plies: 6 more
    board.push(last)
    assert board.halfmove == NO_CAPTURE_PLIES + 6 and board.outcome() == Outcome(None, "no_capture")


def test_move_limit_draws_and_is_not_the_no_capture_rule() -> None:
    board = Board.from_moves("b0c2 b9c7 c2b0 h9g7", max_plies=4)
    assert board.outcome() == Outcome(None, "move_limit")
    assert Board.from_moves("b0c2 b9c7 c2b0 h9g7", max_plies=None).outcome() is None
    assert Board.from_moves(NO_CAPTURE[1], fen=NO_CAPTURE[0], max_plies=None).outcome().reason == "no_capture"


# ---- game end against fairy-stockfish ---------------------------------------------

def other(side: str) -> str:
    return "black" if side == "red" else "red"


def verdict(board: Board) -> str | None:
    """None while the game goes on, else 'red', 'black' or 'draw'."""
    outcome = board.outcome()
    return None if outcome is None else outcome.winner or "draw"


def sf_verdict(sf, fen: str, moves: list[str], turn: str) -> str | None:
    """pyffish's verdict after `moves` from `fen` (`turn` moves next): with no legal move, game_result; else
    its "optional" game ends, which are where it keeps the repetition and no-capture rules (Xiangqi has no
    "immediate" ones). Values are from the side to move's point of view."""
    uci = [iccs_to_uci(m) for m in moves]
    if sf.legal_moves("xiangqi", fen, uci):
        over, value = sf.is_optional_game_end("xiangqi", fen, uci)
        if not over:
            return None
    else:
        value = sf.game_result("xiangqi", fen, uci)
    return "draw" if value == 0 else turn if value > 0 else other(turn)


def compare_game(sf, choose: Callable[[Board], str]) -> tuple[int, Outcome]:
    """Play `choose`'s moves from the start until the game ends, requiring Board's verdict to equal pyffish's
    after every ply; returns the plies compared and the outcome. pyffish gets the game from just before its
    last capture: its rules look back no further, and replaying all of it at every ply would be quadratic."""
    board = Board(max_plies=None)
    root, since = board.fen(), []
    plies = 0
    while True:
        expected = sf_verdict(sf, root, since, board.turn)
        assert verdict(board) == expected, f"after {' '.join(board.move_stack)}: pyffish says {expected}"
        plies += 1
        if expected is not None:
            return plies, board.outcome()
        before = board.fen()
        move = choose(board)
        board.push(move)
        if board.halfmove == 0:
            root, since = before, []
        since.append(move)


def gives_check(board: Board, move: str) -> bool:
    board.push(move)
    check = board.is_check()
    board.pop()
    return check


def random_mover(seed: int, check_bias: float = 0.0, back_bias: float = 0.0) -> Callable[[Board], str]:
    """A seeded random player that prefers a checking move with probability `check_bias` and takes back its
    own last move with probability `back_bias` (repetitions, and so perpetual checks, become likely)."""
    rng = random.Random(seed)

    def choose(board: Board) -> str:
        legal = board.legal_moves()
        played = board.move_stack
        if len(played) >= 2 and rng.random() < back_bias:
            back = played[-2][2:] + played[-2][:2]
            if back in legal:
                return back
        if rng.random() < check_bias:
            checks = [m for m in legal if gives_check(board, m)]
            if checks:
                return rng.choice(checks)
        return rng.choice(legal)

    return choose


def replay(moves: list[str]) -> Callable[[Board], str]:
    return lambda board: moves[len(board.move_stack)]


def compare_games(players: list[Callable[[Board], str]]) -> Counter:
    """`compare_game` for each player (both sides); how many games ended for each reason."""
    sf = pytest.importorskip("pyffish")
    return Counter(compare_game(sf, choose)[1].reason for choose in players)


@pytest.mark.parametrize(("seeds", "bias", "must_see"), [
    (range(7, 11), {}, {"checkmate", "stalemate", "repetition", "no_capture"}),
    (range(19, 24), {"check_bias": 0.9}, {"checkmate", "perpetual_check"}),
    (range(12), {"check_bias": 0.3, "back_bias": 0.5}, {"repetition"}),
], ids=["random", "checking", "repeating"])
def test_game_end_matches_pyffish_on_every_ply_of_random_games(seeds: range, bias: dict, must_see: set[str]) -> None:
    reasons = compare_games([random_mover(seed, **bias) for seed in seeds])
    assert must_see <= reasons.keys(), reasons  # the seeds are picked to reach these endings


def test_game_end_matches_pyffish_on_every_ply_of_engine_games() -> None:
    reasons = compare_games([replay(line.split()) for line in data_lines(ENGINE_GAMES)])
    assert {"checkmate", "stalemate", "repetition", "no_capture"} <= reasons.keys(), reasons


def cycles() -> list[tuple[str, str, str]]:
    """(FEN, moves, pyffish's recorded verdict) of the repetition cycles fixture."""
    return [tuple(line.split(";")) for line in data_lines(CYCLES)]


def test_repetition_cycles_end_as_pyffish_recorded() -> None:
    """Short cycles in which pieces keep attacking fleeing ones, so that chases decide many of them."""
    reasons = Counter()
    for fen, moves, recorded in cycles():
        board = Board.from_moves(moves, fen=fen)
        assert verdict(board) == recorded, (fen, moves)
        reasons[board.outcome().reason, recorded] += 1
    assert reasons[("perpetual_chase", "red")] >= 50 and reasons[("perpetual_chase", "black")] >= 50, reasons
    assert reasons[("perpetual_check", "red")] >= 10 and reasons[("repetition", "draw")] >= 100, reasons


def test_recorded_cycle_verdicts_are_pyffish_s() -> None:
    sf = pytest.importorskip("pyffish")
    for fen, moves, recorded in cycles():
        turn = Board.from_moves(moves, fen=fen).turn
        assert sf_verdict(sf, fen, moves.split(), turn) == recorded, (fen, moves)


@pytest.mark.parametrize(("fen", "moves"), HAND_MADE, ids=["check", "chase", "no_capture", "checks_extend"])
def test_hand_made_endings_match_pyffish(fen: str, moves: list[str]) -> None:
    sf = pytest.importorskip("pyffish")
    board = Board(fen)
    for move in [*moves.split(), None]:
        assert verdict(board) == sf_verdict(sf, fen, board.move_stack, board.turn), board.move_stack
        if move:
            board.push(move)


def test_render_draws_both_sides() -> None:
    text = render(Board())
    assert "帥" in text and "將" in text and text.count("\n") == 12
    letters = render(Board(), chinese=False).splitlines()
    assert letters[1] == "9  r  n  b  a  k  a  b  n  r" and letters[-2] == "0  R  N  B  A  K  A  B  N  R"


# ---- data script helpers (no engine needed) ----------------------------------------

def test_load_games_drops_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "games.jsonl"
    good = json.dumps({"index": 0, "moves": "h2e2"}) + "\n"
    path.write_text(good + '{"index": 1, "mo')
    assert [g["index"] for g in load_games(path)] == [0]
    assert path.read_text() == good


def test_games_load_in_index_order_whatever_order_the_workers_finished(tmp_path: Path) -> None:
    path = tmp_path / "games.jsonl"
    path.write_text("".join(json.dumps({"index": i, "moves": "h2e2"}) + "\n" for i in (2, 0, 3, 1)))
    assert [g["index"] for g in load_games(path)] == [0, 1, 2, 3]


def test_split_is_deterministic() -> None:
    assert split_of("h2e2 h9g7") == split_of("h2e2 h9g7")
    assert {split_of(f"h2e2 {i}") for i in range(200)} == {"train", "valid", "test"}
