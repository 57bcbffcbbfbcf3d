"""The tree move scorer equals scoring every move by a full run without a cache, keeps its cache, plays legal moves."""

from __future__ import annotations

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import InputError
from edgeinfer.xiangqi import Board
from edgeinfer.xiangqi.mover import MoveModel
from edgeinfer.xiangqi.tokens import TOKEN_ID, VOCAB, encode_moves

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module", params=["standard", "contrib", "tree"])
def movers(request, tmp_path_factory):
    """The three scoring paths: forked caches (standard), level by level (contrib), one tree call (tree)."""
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.onnx_export import export_gpt_bundle

    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=len(VOCAB), n_positions=128, n_embd=32, n_layer=2, n_head=4))
    for p in model.parameters():  # large weights: scores far from uniform
        p.data.mul_(8)
    path = tmp_path_factory.mktemp("xq") / request.param
    if request.param == "tree":
        export_gpt_bundle(model, path, attention="standard", attention_mask="query_key", task="xiangqi")
    else:
        export_gpt_bundle(model, path, attention=request.param, task="xiangqi")
    return edgeinfer.load(path, device="cpu")


def _random_game(plies: int, seed: int) -> Board:
    rng = np.random.default_rng(seed)
    board = Board()
    for _ in range(plies):
        moves = board.legal_moves()
        if not moves:
            break
        board.push(moves[rng.integers(len(moves))])
    return board


def rerun_scores(model, board: Board) -> dict[str, float]:
    """The reference: each legal move appended to the whole game, all run at once without a cache."""
    moves = board.legal_moves()
    ids = np.array([encode_moves(board.move_stack) + [TOKEN_ID[c] for c in move] for move in moves])
    logits = model.logits(ids)[:, -5:-1].astype(np.float64)
    logprobs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    chosen = np.take_along_axis(logprobs, ids[:, -4:, None], axis=-1)[..., 0]
    return {move: float(chosen[i].sum()) for i, move in enumerate(moves)}


@pytest.mark.parametrize("plies, seed", [(0, 0), (1, 1), (7, 2), (20, 3)])
def test_tree_scores_equal_rerun(movers, plies, seed):
    board = _random_game(plies, seed)
    scored = MoveModel(movers).score(board)
    reference = rerun_scores(movers, board)
    assert sorted(s.move for s in scored) == sorted(reference)
    for s in scored:
        assert s.logprob == pytest.approx(reference[s.move], abs=1e-4)
    assert scored[0].move == max(reference, key=reference.get)
    assert sum(s.probability for s in scored) == pytest.approx(1.0)


def test_cache_kept_across_turns(movers):
    mover = MoveModel(movers)
    board = _random_game(4, 9)
    mover.score(board)
    kept = mover._prefix
    board.push(mover.best(board).move)
    board.push(board.legal_moves()[0])
    scored = mover.score(board)
    assert mover._prefix.token_ids[: len(kept.token_ids)] == kept.token_ids  # extended, not rebuilt
    fresh = MoveModel(movers).score(board)
    assert [(s.move, round(s.logprob, 4)) for s in scored] == [(s.move, round(s.logprob, 4)) for s in fresh]


def test_samples_are_legal_and_game_end_is_refused(movers):
    mover = MoveModel(movers)
    board = _random_game(3, 4)
    rng = np.random.default_rng(0)
    assert all(mover.sample(board, 2.0, rng).move in board.legal_moves() for _ in range(5))
    with pytest.raises(InputError, match="temperature"):
        mover.sample(board, 0)
    mated = Board("3k5/4R4/4R4/9/9/9/9/9/9/4K4 b - - 0 1")
    assert not mated.legal_moves()
    with pytest.raises(InputError, match="no legal moves"):
        mover.score(mated)


def test_cli_move_and_play(movers, capsys, monkeypatch):
    import json

    from edgeinfer.cli import main

    bundle = str(movers.folder)
    assert main(["move", "--bundle", bundle, "--moves", "h2e2 h9g7", "--top", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    board = Board.from_moves(["h2e2", "h9g7"])
    best = MoveModel(movers).best(board)
    assert out["move"] == best.move and len(out["top"]) == 3 and out["legal_moves"] == len(board.legal_moves())
    assert main(["move", "--bundle", bundle, "--moves", "a0a5", "--json"]) == 2
    assert "illegal move 'a0a5'" in json.loads(capsys.readouterr().out)["error"]

    typed = iter(["z9z9", "h2e2", "quit"])
    monkeypatch.setattr("builtins.input", lambda prompt: next(typed))
    assert main(["play", "--bundle", bundle, "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("not played:") for line in lines)
    result = json.loads(lines[-1])
    assert result["moves"][0] == "h2e2" and len(result["moves"]) == 2 and result["outcome"] is None
