"""Rules engine checks: published perft numbers, agreement with fairy-stockfish (pyffish) on positions
from real self-play games, notation round trips, and informative errors for bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from edgeinfer.commands import perft as perft_command
from edgeinfer.errors import InputError
from edgeinfer.export.xiangqi_data import load_games, split_of
from edgeinfer.xiangqi import (
    START_FEN,
    Board,
    divide,
    iccs_to_uci,
    perft,
    render,
    uci_to_iccs,
)

FIXTURE = Path(__file__).parent / "data" / "xiangqi_positions.txt"
SMOTHERED_MATE = "rnbakabnr/4c4/5N3/p1p3pCp/9/P8/2P3P1P/8R/9/R1BAKABN1 b - - 5 10"
STALEMATE = "3k5/4R4/9/9/3P5/9/9/4B4/3K5/9 b - - 4 83"


def fixture_fens() -> list[str]:
    return [line for line in FIXTURE.read_text().splitlines() if line and not line.startswith("#")]


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


def test_third_repetition_draws() -> None:
    board = Board()
    shuffle = ["b0c2", "b9c7", "c2b0", "c7b9"]
    for move in shuffle:
        board.push(move)
    assert board.repetitions() == 2 and board.outcome() is None
    for move in shuffle:
        board.push(move)
    assert board.repetitions() == 3
    assert board.outcome().reason == "repetition" and board.outcome().result == "1/2-1/2"


def test_move_limit_draws() -> None:
    board = Board.from_moves("b0c2 b9c7 c2b0 h9g7", max_plies=4)
    assert board.outcome().reason == "move_limit" and board.outcome().winner is None
    assert Board.from_moves("b0c2 b9c7 c2b0 h9g7", max_plies=None).outcome() is None


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


def test_split_is_deterministic() -> None:
    assert split_of("h2e2 h9g7") == split_of("h2e2 h9g7")
    assert {split_of(f"h2e2 {i}") for i in range(200)} == {"train", "valid", "test"}
