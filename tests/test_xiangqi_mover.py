"""The tree move scorer equals scoring every move by a full run without a cache, on the position alone or averaged
with its left-right mirror; the board prompt is seen from the side to move and marks a repeated position; training examples (mirrored too) hold legal moves; a bundle of another
prompt is refused."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import BundleError, InputError
from edgeinfer.xiangqi import Board
from edgeinfer.xiangqi.control import control_segments
from edgeinfer.xiangqi.features import (
    ATTACKER_CLASS,
    RICHEST,
    SEGMENTS,
    VALUE,
    controllers,
    en_prise,
    square_segments,
)
from edgeinfer.xiangqi.mover import MoveModel
from edgeinfer.xiangqi.search import (
    MATE,
    best_reply_value,
    material_lead,
    move_value,
    searched_best,
)
from edgeinfer.xiangqi.tables import BLACK, KING, PAWN, RED
from edgeinfer.xiangqi.tokens import (
    HISTORYLESS_VOCAB,
    PIECE_OFFSET,
    PROMPT_TOKENS,
    SEEN,
    START,
    VOCAB,
    board_tokens,
    mirrored_prompt,
    move_tokens,
    oriented_move,
    oriented_squares,
    square_pair,
)

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module", params=["standard", "contrib", "tree"])
def movers(request, tmp_path_factory):
    """The three scoring paths: forked caches (standard), level by level (contrib), one tree call (tree)."""
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.onnx_export import export_gpt_bundle

    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=len(VOCAB), n_positions=PROMPT_TOKENS + 4, n_embd=32, n_layer=2, n_head=4))
    for p in model.parameters():  # large weights: scores far from uniform
        p.data.mul_(8)
    path = tmp_path_factory.mktemp("xq") / request.param
    prompt = {"task": "xiangqi", "extra": {"input": "board", "vocab": VOCAB}}
    if request.param == "tree":
        export_gpt_bundle(model, path, attention="standard", attention_mask="query_key", **prompt)
    else:
        export_gpt_bundle(model, path, attention=request.param, **prompt)
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
    """The reference: each legal move appended to the position's prompt, all run at once without a cache."""
    moves = board.legal_moves()
    prompt = board_tokens(board.squares, board.side, seen=board.repetitions() > 1)
    ids = np.array([prompt + move_tokens(oriented_move(move, board.side)) for move in moves])
    logits = model.logits(ids)[:, -5:-1].astype(np.float64)
    logprobs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    chosen = np.take_along_axis(logprobs, ids[:, -4:, None], axis=-1)[..., 0]
    return {move: float(chosen[i].sum()) for i, move in enumerate(moves)}


FEATURES = RICHEST  # what train_xiangqi gives each square by default
# 4 plies of knights out and back: the start position again, its prompt led by [SEEN]
REPEATING = "h0g2 h9g7 g2h0 g7h9"


MIRROR = str.maketrans("abcdefghi", "ihgfedcba")  # an ICCS move under the left-right mirror


def mirrored_board(board: Board) -> Board:
    return Board.from_moves([move.translate(MIRROR) for move in board.move_stack])


@pytest.mark.parametrize("plies, seed", [(0, 0), (1, 1), (7, 2), (20, 3), (REPEATING, None)])
def test_tree_scores_equal_rerun(movers, plies, seed):
    board = Board.from_moves(plies) if seed is None else _random_game(plies, seed)
    reference = rerun_scores(movers, board)
    mirrored = mirrored_board(board)
    symmetric = mirrored.squares == board.squares  # the start: one view, scored once
    reflected = rerun_scores(movers, mirrored)
    both = reference if symmetric else {move: (score + reflected[move.translate(MIRROR)]) / 2
                                        for move, score in reference.items()}
    for mirror, expected in ((False, reference), (True, both)):
        scored = MoveModel(movers, mirror=mirror).score(board)
        assert sorted(s.move for s in scored) == sorted(expected)
        for s in scored:
            assert s.logprob == pytest.approx(expected[s.move], rel=1e-5, abs=1e-4)  # sums near -60: float32 rounding
        assert scored[0].move == max(expected, key=expected.get)
        assert sum(s.probability for s in scored) == pytest.approx(1.0)
    if not symmetric:
        assert max(abs(both[move] - reference[move]) for move in reference) > 0.1  # the mirror's view counts


def test_score_prompts_equal_one_prompt_at_a_time(movers):
    """Rows of one call, trees of different sizes padded: each row's scores as if scored alone."""
    boards = [_random_game(plies, seed) for plies, seed in ((0, 0), (7, 2), (20, 3))]
    prompts = [board_tokens(board.squares, board.side) for board in boards]
    candidates = [np.array([move_tokens(oriented_move(m, board.side)) for m in board.legal_moves()[:count]])
                  for board, count in zip(boards, (40, 3, 17))]
    together = movers.score_prompts(prompts, candidates)
    for prompt, choices, scores in zip(prompts, candidates, together):
        assert scores == pytest.approx(movers.score_prompt(prompt, choices), abs=1e-5)
    for arguments, message in (
        ((prompts, candidates[:2]), "candidates must be a list with one entry per prompt"),
        ((prompts, candidates, [[0] * 91]), "segment_ids must be a list with one entry per prompt"),
        (([], []), "prompts must be a list of 1 to 64 prompts"),
        ((prompts[0], candidates[0]), "prompts must be a list of 1 to 64 prompts"),
    ):
        with pytest.raises(InputError, match=message):
            movers.score_prompts(*arguments)
    if movers.query_key_mask:  # one call: its prompts must line up
        with pytest.raises(InputError, match=r"prompts scored together must have one length, got \[90, 91\]"):
            movers.score_prompts([prompts[0], prompts[1][:-1]], candidates[:2])


def flipped(fen: str) -> str:
    """The same position with the colours swapped and the board turned top to bottom (the other side to move)."""
    placement, side, *rest = fen.split()
    rows = [row.swapcase() for row in reversed(placement.split("/"))]
    return " ".join(["/".join(rows), "w" if side == "b" else "b", *rest])


@pytest.mark.parametrize("plies, seed", [(1, 5), (9, 6), (30, 7)])
def test_prompt_and_moves_are_seen_from_the_side_to_move(plies, seed):
    board = _random_game(plies, seed)
    mirror = Board(flipped(board.fen()))
    assert board.side != mirror.side
    assert board_tokens(board.squares, board.side) == board_tokens(mirror.squares, mirror.side)
    assert sorted(oriented_move(m, board.side) for m in board.legal_moves()) == \
        sorted(oriented_move(m, mirror.side) for m in mirror.legal_moves())
    assert oriented_move("h9g7", BLACK) == "h0g2" and oriented_move("h9g7", RED) == "h9g7"


def test_training_examples_hold_legal_moves_mirrored_or_not():
    """The labelled move, and the legal moves' square pairs the legal-moves loss reads, are the position's own as the
    example shows it (mirrored or not)."""
    from edgeinfer.export.train_xiangqi import collate, game_positions
    from edgeinfer.export.xiangqi_policy import NO_MOVE
    from edgeinfer.xiangqi.notation import format_placement

    board, moves, labels = Board(max_plies=None), [], []
    rng = np.random.default_rng(11)
    while len(moves) < 40:
        legal = board.legal_moves()
        labels.append(legal[rng.integers(len(legal))])
        moves.append(legal[rng.integers(len(legal))])
        board.push(moves[-1])
    squares, label_ids, _, seen, square_segs, legal = game_positions({"moves": " ".join(moves),
                                                                      "labels": " ".join(labels)})
    for mirror, features in itertools.product((False, True), filter(None, SEGMENTS)):
        ids, targets, segments, pairs = collate(squares, label_ids, seen, square_segs, np.full(len(squares), mirror),
                                                features, legal)
        assert (targets[:, : PROMPT_TOKENS - 1] == -100).all() and (targets[:, -1] == -100).all()
        for row, row_segments, row_pairs in zip(ids.numpy(), segments.numpy(), pairs.numpy()):
            position = Board(format_placement(list(row[1:PROMPT_TOKENS] - PIECE_OFFSET)) + " w - - 0 1", max_plies=None)
            assert "".join(VOCAB[t] for t in row[PROMPT_TOKENS:]) in position.legal_moves()
            expected = sorted(square_pair(m) for m in position.legal_moves())
            assert sorted(row_pairs[row_pairs != NO_MOVE]) == expected
            # the segments computed while replaying the game, mirrored and reduced to a coarser feature set, are
            # the ones of the board as seen under that set
            assert list(row_segments[1:PROMPT_TOKENS]) == square_segments(position, features)
            assert row_segments[0] == 0 and (row_segments[PROMPT_TOKENS:] == 0).all()


def test_winning_labels_are_flagged_and_drawn_as_often_as_weighted():
    from edgeinfer.export.train_xiangqi import batches, game_positions

    rng, board, moves = np.random.default_rng(2), Board(max_plies=None), []
    while board.legal_moves():  # seed 2: a random game that ends in mate at ply 130
        legal = board.legal_moves()
        moves.append(legal[rng.integers(len(legal))])
        board.push(moves[-1])
    assert len(moves) == 130 and board.is_check()
    squares, labels, wins, seen, segments, legal = game_positions({"moves": " ".join(moves), "labels": " ".join(moves)})
    assert wins.tolist() == [False] * 129 + [True]
    # with weight 10 the one winning position of 130 is drawn with probability 10 / 139
    ids, _, _ = next(batches(squares, labels, wins, seen, segments, legal, 20000, seed=0, features=None, win_weight=10.0))
    share = np.mean((ids[:, 1:PROMPT_TOKENS].numpy() - PIECE_OFFSET == squares[-1]).all(axis=1)
                    | (ids[:, 1:PROMPT_TOKENS].numpy() - PIECE_OFFSET == squares[-1].reshape(10, 9)[:, ::-1].ravel()).all(axis=1))
    assert abs(share - 10 / 139) < 0.005


@pytest.mark.parametrize("mirror_share", [0.0, 0.3, 1.0])
def test_the_share_of_mirrored_examples_is_the_one_asked_for(mirror_share):
    from edgeinfer.export.train_xiangqi import batches, game_positions

    moves = _random_game(12, 8).move_stack
    positions = game_positions({"moves": " ".join(moves), "labels": " ".join(moves)})
    squares, labels, wins, seen, segments, legal = (part[1:] for part in positions)  # the start is its own mirror
    as_is = {row.tobytes() for row in squares}
    as_mirrored = {row.reshape(10, 9)[:, ::-1].ravel().tobytes() for row in squares}
    assert not as_is & as_mirrored
    ids, _, _ = next(batches(squares, labels, wins, seen, segments, legal, 4000, seed=1, features=None,
                             mirror_share=mirror_share))
    prompts = [row.astype(np.int8).tobytes() for row in ids[:, 1:PROMPT_TOKENS].numpy() - PIECE_OFFSET]
    assert all(p in as_is or p in as_mirrored for p in prompts)
    assert abs(np.mean([p in as_mirrored for p in prompts]) - mirror_share) < 0.03


@pytest.mark.parametrize("option, value", [("--mirror-share", "-0.1"), ("--mirror-share", "1.5"), ("--ema", "-0.5"),
                                           ("--ema", "1.01")])
def test_a_share_or_decay_outside_0_to_1_is_refused_by_name(option, value, capsys):
    from edgeinfer.export.train_xiangqi import main

    with pytest.raises(SystemExit) as refused:
        main([option, value, "--data", "no-such-folder"])
    assert refused.value.code == 2 and f"{option} must be between 0 and 1" in capsys.readouterr().err


def test_repeated_positions_start_with_seen_in_training_and_at_run_time(movers, tmp_path):
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.onnx_export import export_gpt_bundle
    from edgeinfer.export.train_xiangqi import batches, collate, game_positions

    moves = (REPEATING + " h0g2 h9g7 b0c2").split()  # positions 4-6 repeat positions 0-2
    squares, labels, wins, seen, segments, legal = game_positions({"moves": " ".join(moves), "labels": " ".join(moves)})
    assert seen.tolist() == [False] * 4 + [True] * 3
    ids, _, _ = collate(squares, labels, seen, segments, np.zeros(len(moves), dtype=bool), features=None)
    assert ids[:, 0].tolist() == [START] * 4 + [SEEN] * 3
    # seen_weight 5: the 3 repeats of 7 positions are drawn with probability 15 / 19
    ids, _, _ = next(batches(squares, labels, wins, seen, segments, legal, 20000, seed=0, features=None, seen_weight=5.0))
    assert abs((ids[:, 0] == SEEN).float().mean().item() - 15 / 19) < 0.01

    board = Board.from_moves(REPEATING)
    assert MoveModel(movers).prompt(board)[0][0] == SEEN
    board.push("b0c2")
    assert MoveModel(movers).prompt(board)[0][0] == START
    torch.manual_seed(0)  # a bundle of the vocabulary before [SEEN] reads every position as new
    model = GPT(GPTConfig(vocab_size=len(HISTORYLESS_VOCAB), n_positions=PROMPT_TOKENS + 4, n_embd=16, n_layer=1,
                          n_head=2))
    export_gpt_bundle(model, tmp_path / "old", attention="standard", attention_mask="query_key", task="xiangqi",
                      extra={"input": "board", "vocab": HISTORYLESS_VOCAB})
    old = MoveModel(edgeinfer.load(tmp_path / "old", device="cpu"))
    assert old.prompt(Board.from_moves(REPEATING))[0][0] == START
    assert sorted(s.move for s in old.score(Board.from_moves(REPEATING))) == sorted(Board().legal_moves())


def test_warm_start_from_a_model_without_seen_keeps_its_function(tmp_path):
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.train_xiangqi import warm_start

    config = {"n_positions": PROMPT_TOKENS + 4, "n_embd": 16, "n_layer": 1, "n_head": 2}
    torch.manual_seed(3)
    old = GPT(GPTConfig(vocab_size=len(HISTORYLESS_VOCAB), **config))
    torch.save({"config": old.cfg.to_dict(), "state_dict": old.state_dict()}, tmp_path / "model.pt")
    new = GPT(GPTConfig(vocab_size=len(VOCAB), **config))
    warm_start(new, tmp_path / "model.pt")
    prompt = torch.tensor([board_tokens(Board().squares, Board().side) + move_tokens("h2e2")])
    with torch.no_grad():
        reference = old.training_logits(prompt)
        assert torch.allclose(new.training_logits(prompt)[..., : len(HISTORYLESS_VOCAB)], reference, atol=1e-6)
        prompt[0, 0] = SEEN  # [SEEN] starts as the start token's copy
        assert torch.allclose(new.training_logits(prompt)[..., : len(HISTORYLESS_VOCAB)], reference, atol=1e-6)


def test_warm_start_from_the_shipped_bundle_folder_keeps_its_function():
    from edgeinfer.export.bundle_import import gpt_from_bundle
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.train_xiangqi import warm_start
    from edgeinfer.loader import default_bundle

    folder = default_bundle("xiangqi-chars")
    shipped = gpt_from_bundle(folder).eval()
    new = GPT(GPTConfig(**{**shipped.cfg.to_dict(), "vocab_size": len(VOCAB)})).eval()
    warm_start(new, folder)
    board = Board.from_moves(REPEATING)
    prompt = torch.tensor([board_tokens(board.squares, board.side) + move_tokens("h2e2")])
    features = MoveModel(edgeinfer.load(folder)).features
    segments = torch.tensor([[0, *square_segments(board, features), 0, 0, 0, 0]])
    with torch.no_grad():
        reference = shipped.training_logits(prompt, segments)
        assert torch.equal(new.training_logits(prompt, segments)[..., : shipped.cfg.vocab_size], reference)


def test_warm_start_into_more_layers_keeps_its_function_and_trains_the_added_ones(tmp_path):
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.train_xiangqi import warm_start

    config = {"vocab_size": len(VOCAB), "n_positions": PROMPT_TOKENS + 4, "n_embd": 16, "n_head": 2,
              "bidirectional_prefix": PROMPT_TOKENS}
    torch.manual_seed(5)
    old = GPT(GPTConfig(**config, n_layer=1)).eval()
    torch.save({"config": old.cfg.to_dict(), "state_dict": old.state_dict()}, tmp_path / "model.pt")
    new = GPT(GPTConfig(**config, n_layer=3)).eval()
    warm_start(new, tmp_path / "model.pt")
    board = _random_game(30, 1)
    prompt = torch.tensor([board_tokens(board.squares, board.side) + move_tokens("h2e2")])
    with torch.no_grad():
        assert torch.allclose(new.training_logits(prompt), old.training_logits(prompt), atol=1e-6)
    targets = torch.full_like(prompt, -100)
    targets[0, -5:-1] = prompt[0, -4:]
    new.loss(prompt, targets).backward()
    for block in new.blocks[1:]:  # the added blocks start as identities but learn
        assert block.mlp.proj.weight.grad.abs().max() > 0 and block.attn.proj.weight.grad.abs().max() > 0
    torch.save({"config": new.cfg.to_dict(), "state_dict": new.state_dict()}, tmp_path / "grown.pt")
    with pytest.raises(SystemExit, match="unexpected"):  # fewer layers than the checkpoint: refused
        warm_start(GPT(GPTConfig(**config, n_layer=1)), tmp_path / "grown.pt")


@pytest.mark.parametrize("before, after", [("control", "control+checks"), ("control", "control+checks+threats"),
                                           ("control+checks", "control+checks+threats"), ("control", FEATURES),
                                           ("control+checks+threats", FEATURES),
                                           ("control+checks+threats+attackers", FEATURES)])
def test_warm_start_from_fewer_square_features_keeps_its_function(before, after, tmp_path):
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.train_xiangqi import warm_start

    config = {"vocab_size": len(VOCAB), "n_positions": PROMPT_TOKENS + 4, "n_embd": 16, "n_layer": 1, "n_head": 2,
              "bidirectional_prefix": PROMPT_TOKENS}
    torch.manual_seed(4)
    old = GPT(GPTConfig(**config, n_segments=SEGMENTS[before])).eval()
    torch.save({"config": old.cfg.to_dict(), "state_dict": old.state_dict()}, tmp_path / "model.pt")
    new = GPT(GPTConfig(**config, n_segments=SEGMENTS[after])).eval()
    warm_start(new, tmp_path / "model.pt")
    board = next(board for seed in range(40) if (board := _random_game(40, seed)).checking_moves())
    segments = square_segments(board, after)
    assert max(segments) >= SEGMENTS[before]  # the added features are in force on this board
    prompt = torch.tensor([board_tokens(board.squares, board.side) + move_tokens("h2e2")])
    with torch.no_grad():
        reference = old.training_logits(prompt, torch.tensor([[0, *square_segments(board, before), 0, 0, 0, 0]]))
        got = new.training_logits(prompt, torch.tensor([[0, *segments, 0, 0, 0, 0]]))
    assert torch.allclose(got, reference, atol=1e-6)


def test_a_bundle_of_another_prompt_is_refused(tmp_path):
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.onnx_export import export_gpt_bundle

    torch.manual_seed(0)
    export_gpt_bundle(GPT(GPTConfig(vocab_size=20, n_positions=64, n_embd=16, n_layer=1, n_head=2)), tmp_path / "old",
                      attention="standard", attention_mask="query_key", task="xiangqi")
    with pytest.raises(BundleError, match="board prompt"):
        MoveModel(edgeinfer.load(tmp_path / "old", device="cpu"))


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


@pytest.mark.parametrize("fen, moves, losing, reply", [
    # red's rook has checked on every move; i8i9 would make the position after its first check occur a 3rd time
    ("3k4R/9/9/9/9/9/9/9/9/4K4 b - - 1 1", "d9d8 i9i8 d8d9 i8i9 d9d8 i9i8 d8d9", "i8i9", None),
    # the same cycle from red's move: after i9i8, black's d8d9 makes the start position occur a 3rd time
    ("3k5/8R/9/9/9/9/9/9/9/4K4 w - - 0 1", "i8i9 d9d8 i9i8 d8d9 i8i9 d9d8", "i9i8", "d8d9"),
])
def test_a_move_that_loses_by_perpetual_check_is_ranked_last(movers, fen, moves, losing, reply):
    board = Board.from_moves(moves, fen=fen)
    assert board.outcome() is None and board.turn == "red"
    scored = MoveModel(movers).score(board)
    assert scored[-1].move == losing and len(scored) > 1
    board.push(losing)
    if reply:
        assert board.outcome() is None
        board.push(reply)
    assert board.outcome().winner == "black" and board.outcome().reason == "perpetual_check"


def test_may_repeat_never_misses_a_repetition():
    """Board.may_repeat is a shortcut: where it says no, no move (or pair of moves) makes a 3rd occurrence."""
    said, reached = {True: 0, False: 0}, 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        board = Board("3k5/8R/9/9/9/9/9/9/9/4K4 w - - 0 1", max_plies=None)  # few pieces: positions recur
        for _ in range(60):
            if board.outcome() is not None:
                break
            for plies in (1, 2):
                most = max(_most_repetitions(board, plies), default=0)
                said[board.may_repeat(plies)] += 1
                assert board.may_repeat(plies) or most < 3
                reached += most >= 3
            moves = board.legal_moves()
            undo = board.move_stack[-2][2:] + board.move_stack[-2][:2] if len(board.move_stack) > 1 else None
            board.push(undo if undo in moves and rng.random() < 0.7 else moves[rng.integers(len(moves))])  # shuffle
    assert said[True] > 20 and said[False] > 20 and reached > 10  # both answers given, real repetitions met


def _most_repetitions(board: Board, plies: int):
    for move in board.legal_moves():
        board.push(move)
        if plies == 1:
            yield board.repetitions()
        elif board.outcome() is None:
            yield max(_most_repetitions(board, 1), default=0)
        board.pop()


# ---------------------------------------------------------------- the board prompt read both ways (a prefix LM)
@pytest.fixture(scope="module")
def prefix_lm(tmp_path_factory):
    """A torch GPT whose 91 prompt tokens see each other and carry their squares' segments (control, check levels and
    threats), and its bundle."""
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.onnx_export import export_gpt_bundle

    torch.manual_seed(5)
    model = GPT(GPTConfig(vocab_size=len(VOCAB), n_positions=PROMPT_TOKENS + 4, n_embd=32, n_layer=2, n_head=4,
                          bidirectional_prefix=PROMPT_TOKENS, n_segments=SEGMENTS[FEATURES]))
    for p in model.parameters():
        p.data.mul_(3)
    path = tmp_path_factory.mktemp("xq") / "prefix"
    export_gpt_bundle(model.eval(), path, attention="standard", attention_mask="query_key", task="xiangqi",
                      extra={"input": "board", "vocab": VOCAB, "square_features": FEATURES})
    return model, edgeinfer.load(path, device="cpu")


def torch_scores(model, board: Board, prefix: int) -> dict[str, float]:
    """Each legal move's summed character log-probabilities from PyTorch, prompt tokens seeing the first `prefix`."""
    moves = board.legal_moves()
    prompt = board_tokens(board.squares, board.side)
    ids = torch.tensor([prompt + move_tokens(oriented_move(move, board.side)) for move in moves])
    segments = torch.zeros_like(ids)
    segments[:, 1:PROMPT_TOKENS] = torch.tensor(square_segments(board, FEATURES))
    model.cfg.bidirectional_prefix, kept = prefix, model.cfg.bidirectional_prefix
    try:
        with torch.no_grad():
            logprobs = torch.log_softmax(model.training_logits(ids, segments).double(), -1)[:, -5:-1]
    finally:
        model.cfg.bidirectional_prefix = kept
    chosen = logprobs.gather(-1, ids[:, -4:, None])[..., 0].sum(-1)
    return {move: float(chosen[i]) for i, move in enumerate(moves)}


@pytest.mark.parametrize("plies, seed", [(0, 0), (9, 4), (30, 5)])
def test_prefix_lm_scores_equal_pytorch(prefix_lm, plies, seed):
    model, bundle = prefix_lm
    board = _random_game(plies, seed)
    scored = {s.move: s.logprob for s in MoveModel(bundle, mirror=False).score(board)}
    both_ways = torch_scores(model, board, PROMPT_TOKENS)
    assert scored.keys() == both_ways.keys()
    for move, score in scored.items():
        assert score == pytest.approx(both_ways[move], rel=1e-5, abs=1e-4)
    causal = torch_scores(model, board, 0)  # the same weights read causally score otherwise: the mask is in force
    assert max(abs(causal[m] - both_ways[m]) for m in scored) > 0.1
    table = model.wse.weight.detach().clone()
    with torch.no_grad():
        model.wse.weight.zero_()
        unseen = torch_scores(model, board, PROMPT_TOKENS)  # and so do they without the control segments
        model.wse.weight.copy_(table)
    assert max(abs(unseen[m] - both_ways[m]) for m in scored) > 0.1


@pytest.mark.parametrize("plies, seed", [(0, 0), (12, 6), (40, 7), (90, 8), (120, 9)])
def test_the_mirrored_prompt_is_the_prompt_of_the_mirrored_position(prefix_lm, plies, seed):
    """Move choice mirrors a prompt and its square features instead of building the mirrored position's: the same."""
    board = _random_game(plies, seed)
    mover = MoveModel(prefix_lm[1])
    tokens, segments = mover.prompt(board)
    assert (mirrored_prompt(tokens), mirrored_prompt(segments)) == mover.prompt(mirrored_board(board))
    assert mirrored_prompt(mirrored_prompt(segments)) == segments
    assert (tokens != mirrored_prompt(tokens)) == (plies > 0)  # the start position is its own mirror


def test_mirror_is_checked(prefix_lm):
    with pytest.raises(InputError, match="mirror must be True or False, got 'yes'"):
        MoveModel(prefix_lm[1], mirror="yes")


def control_reference(squares: list[int], side: int) -> list[int]:
    """How many of `side`'s pieces could capture on each square were an enemy pawn there, by the rules' own move
    generator."""
    board = Board()
    counts = []
    for target in range(len(squares)):
        board.squares = list(squares)
        board.squares[target] = -side * PAWN
        board.side = side
        counts.append(sum(1 for m in board._pseudo_moves() if m & 127 == target))
    return counts


@pytest.mark.parametrize("plies, seed", [(0, 0), (12, 6), (40, 7), (90, 8)])
def test_control_counts_equal_the_move_generator(plies, seed):
    board = _random_game(plies, seed)
    for side in (RED, BLACK):
        assert controllers(board.squares, side)[0] == control_reference(board.squares, side)
    oriented = oriented_squares(board.squares, board.side)
    own, other = control_reference(oriented, RED), control_reference(oriented, BLACK)
    assert control_segments(own, other) == [1 + 3 * min(a, 2) + min(b, 2) for a, b in zip(own, other)]
    assert square_segments(board, "control") == control_segments(own, other)


def en_prise_reference(squares: list[int]) -> list[int]:
    """Pieces (not kings) of a board seen from the side to move that the other side can capture, by the rules' own
    move generator: with no defender (`control_reference`), or a capturer of lower VALUE."""
    board, flags = Board(), []
    for target, piece in enumerate(squares):
        owner = RED if piece > 0 else BLACK
        board.squares, board.side = list(squares), -owner
        capturers = [abs(squares[m >> 7]) for m in board._pseudo_moves() if m & 127 == target]
        if not piece or abs(piece) == KING or not capturers:
            flags.append(0)
            continue
        crossed = abs(piece) == PAWN and (target // 9 >= 5) == (owner == RED)
        value = VALUE[abs(piece)] * (2 if crossed else 1)
        defended = control_reference(squares, owner)[target] > 0
        flags.append(int(not defended or min(VALUE[k] for k in capturers) < value))
    return flags


@pytest.mark.parametrize("plies, seed", [(12, 6), (40, 7), (90, 8), (120, 9)])
def test_en_prise_equals_the_move_generator(plies, seed):
    board = _random_game(plies, seed)
    oriented = oriented_squares(board.squares, board.side)
    flags = en_prise(oriented, {side: controllers(oriented, side)[1] for side in (RED, BLACK)})
    assert flags == en_prise_reference(oriented)
    segments = square_segments(board, "control+checks+threats")
    checks = square_segments(board, "control+checks")
    assert segments == [c + 27 * f for c, f in zip(checks, flags)]
    assert max(segments) < SEGMENTS["control+checks+threats"]


def test_en_prise_flags_met_in_play():
    def flags(board: Board) -> list[int]:
        oriented = oriented_squares(board.squares, board.side)
        return en_prise(oriented, {side: controllers(oriented, side)[1] for side in (RED, BLACK)})

    flagged = sum(sum(flags(board)) for board in map(_random_game, [20, 40, 60], [1, 2, 3]))
    assert flagged >= 3  # random play leaves pieces en prise: the reference comparison above sees both answers


def cheapest_attacker_reference(squares: list[int]) -> list[int]:
    """The VALUE of the cheapest piece of the side not to move (a board seen from the side to move) that could capture
    on each square were a piece of the side to move there, by the rules' own move generator (0: none)."""
    board, cheapest = Board(), []
    for target in range(len(squares)):
        board.squares, board.side = list(squares), BLACK
        board.squares[target] = PAWN
        capturers = [VALUE[abs(squares[m >> 7])] for m in board._pseudo_moves() if m & 127 == target]
        cheapest.append(min(capturers, default=0))
    return cheapest


@pytest.mark.parametrize("plies, seed", [(12, 6), (40, 7), (90, 8), (120, 9)])
def test_attacker_classes_equal_the_move_generator(plies, seed):
    board = _random_game(plies, seed)
    oriented = oriented_squares(board.squares, board.side)
    classes = [ATTACKER_CLASS[value] for value in cheapest_attacker_reference(oriented)]
    assert sorted(set(classes)) == [0, 1, 2, 3]  # every class met, so the comparison sees each answer
    threats = square_segments(board, "control+checks+threats")
    segments = square_segments(board, "control+checks+threats+attackers")
    assert segments == [t + 54 * c for t, c in zip(threats, classes)]
    assert max(segments) < SEGMENTS["control+checks+threats+attackers"]


def attacking_moves_reference(board: Board) -> list[int]:
    """Squares (seen from the side to move) that a legal move leaves from or lands on while the moving piece can
    capture, from where it lands, an enemy piece but the king that it could not capture from where it stood, one
    that no enemy piece defends or that is worth more than the mover: by the rules' own move generator."""
    oriented = oriented_squares(board.squares, board.side)
    defended = control_reference(oriented, BLACK)
    scratch, flags = Board(), [0] * len(oriented)

    def captures(squares: list[int], origin: int) -> set[int]:
        scratch.squares, scratch.side = list(squares), RED
        return {m & 127 for m in scratch._pseudo_moves() if m >> 7 == origin and squares[m & 127] < 0}

    for move in board.legal_moves():
        m = oriented_move(move, board.side)
        origin, landing = (int(m[i + 1]) * 9 + "abcdefghi".index(m[i]) for i in (0, 2))
        after = list(oriented)
        after[landing], after[origin] = after[origin], 0
        for target in captures(after, landing) - captures(oriented, origin):
            piece = -after[target]
            crossed = piece == PAWN and target // 9 < 5
            if piece != KING and (not defended[target] or VALUE[piece] * (2 if crossed else 1) > VALUE[after[landing]]):
                flags[origin] = flags[landing] = 1
    return flags


@pytest.mark.parametrize("plies, seed", [(12, 6), (40, 7), (90, 8), (120, 9), (41, 10)])
def test_attacking_moves_equal_the_move_generator(plies, seed):
    board = _random_game(plies, seed)
    flags = attacking_moves_reference(board)
    assert 0 < sum(flags) < len(flags)  # both answers met, so the comparison sees each
    attackers = square_segments(board, "control+checks+threats+attackers")
    segments = square_segments(board, FEATURES)
    assert segments == [a + 216 * f for a, f in zip(attackers, flags)]
    assert max(segments) < SEGMENTS[FEATURES]


def test_a_bundle_with_unknown_square_features_is_refused(prefix_lm, tmp_path):
    import json
    import shutil

    _, bundle = prefix_lm
    for features, message in (("attacks", "'square_features' is 'attacks'"), (None, "None needs model.n_segments 0"),
                              (["control"], r"'square_features' is \['control'\]"),
                              ("control", "'control' needs model.n_segments 10")):
        folder = tmp_path / str(features)
        shutil.copytree(bundle.folder, folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest.pop("square_features") if features is None else manifest.update(square_features=features)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(BundleError, match=message):
            MoveModel(edgeinfer.load(folder, device="cpu"))


def test_prefix_lm_mask_rule():
    from edgeinfer.lm.step import query_key_mask

    key_mask = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])  # the second row left-padded by 2
    got = query_key_mask(key_mask, 6, bidirectional_prefix=3)
    for row, pad in enumerate((0, 2)):
        for q in range(6):
            for k in range(6):
                qpos, kpos = q - pad, k - pad
                expected = kpos >= 0 and qpos >= 0 and (kpos <= qpos or (qpos < 3 and kpos < 3))
                expected = expected or (qpos < 0 and kpos >= 0 and kpos <= qpos)  # a pad query: causal as before
                assert got[row, q, k] == expected, (row, q, k)
    assert (query_key_mask(key_mask, 2, 3) == got[:, -2:]).all()  # a cached step sees what the full run saw


def test_prefix_lm_prompt_must_hold_the_whole_prefix(prefix_lm):
    _, bundle = prefix_lm
    board = board_tokens(Board().squares, RED)
    for call in (lambda: bundle.generate([board[:50]], max_new_tokens=2),
                 lambda: bundle.prefill(board[:90]),
                 lambda: bundle.prefill(board[50:], prefix=bundle.prefill(board[:50]))):
        with pytest.raises(InputError, match="reads its first 91 tokens together"):
            call()
    [greedy] = bundle.generate([board], max_new_tokens=4, do_sample=False)
    assert len(greedy.token_ids) == 4
    longer = bundle.prefill(board[-1:], prefix=bundle.prefill(board[:-1] + board[-1:]))  # after the prefix: free
    assert len(longer.token_ids) == PROMPT_TOKENS + 1


def test_a_bidirectional_prefix_needs_the_query_key_mask(tmp_path):
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.onnx_export import ExportError, export_gpt_bundle

    model = GPT(GPTConfig(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2, bidirectional_prefix=4))
    with pytest.raises(ExportError, match="a prefix LM needs attention_mask 'query_key'"):
        export_gpt_bundle(model, tmp_path / "b", attention="standard")


class _FirstMoveEngine:
    """Stands in for fairy-stockfish: its best move is the first legal one, and it records the node budgets asked."""

    def __init__(self) -> None:
        self.nodes: list[int] = []

    def new_game(self) -> None:
        pass

    def best_move(self, uci_moves: list[str], nodes: int) -> str:
        from edgeinfer.xiangqi import iccs_to_uci, uci_to_iccs

        self.nodes.append(nodes)
        return iccs_to_uci(Board.from_moves([uci_to_iccs(m) for m in uci_moves], max_plies=None).legal_moves()[0])


@pytest.mark.parametrize("seed, kind", [(2, "policy_random_opponent"), (3, "policy_engine_opponent")])
def test_policy_games_play_the_policy_against_the_benchmark_opponents(seed, kind):
    from edgeinfer.export.xiangqi_data import OPPONENT_NODES, play_game

    engine, asked = _FirstMoveEngine(), []

    def policy(board: Board) -> str:  # the last legal move: never the engine's label
        asked.append(board.turn)
        return board.legal_moves()[-1]

    game = play_game(engine, seed, label_nodes=1000, max_plies=60, opening=(2, 2), policy=policy)
    assert game["kind"] == kind
    moves, labels = game["moves"].split(), game["labels"].split()
    board, strong = Board(max_plies=None), set(asked)
    assert len(strong) == 1  # one side is the policy's
    played_policy = 0
    for ply, (move, label) in enumerate(zip(moves, labels, strict=True)):
        legal = board.legal_moves()
        assert label == legal[0] and move in legal
        if ply >= 2 and board.turn in strong:
            played_policy += move == legal[-1]
        board.push(move)
    strong_plies = sum(1 for ply in range(2, len(moves)) if ("red", "black")[ply % 2] in strong)
    assert played_policy >= 0.9 * strong_plies  # all but the 3% exploring moves
    opponent_engine_calls = engine.nodes.count(OPPONENT_NODES)
    assert (opponent_engine_calls > 0) == (kind == "policy_engine_opponent")
    assert engine.nodes.count(1000) == len(moves)  # every position labelled


@pytest.mark.parametrize("fen, expected", [
    ("3k5/9/9/9/4r4/9/9/9/4R4/4K4 w - - 0 1", {"e1e5": 9.0}),  # a free rook
    ("3k5/9/9/9/4r4/9/4p4/9/4R4/4K4 w - - 0 1", {"e1e3": 2.0 - 9.0}),  # a crossed pawn, then the rook is lost
    ("3k5/R8/9/9/9/9/9/9/9/1R2K4 w - - 0 1", {"b0b9": MATE, "a8e8": MATE}),  # mate; and stalemate, also a win
])
def test_search_values_are_material_two_plies_deep(fen, expected):
    board = Board(fen)
    for move, value in expected.items():
        assert move_value(board, move) == value
    assert board.fen() == fen


def test_search_finds_the_opponents_mate_and_keeps_the_board():
    board = Board("3k5/R8/9/9/9/9/9/9/9/1R3K3 b - - 0 1")  # black to move: after d9e9, b0b9 mates
    assert best_reply_value(board) == 0.0  # black's own replies capture nothing
    board.push("d9e9")
    assert best_reply_value(board) == MATE and board.move_stack == ["d9e9"]


def test_search_trades_the_prior_against_material(movers):
    mover = MoveModel(movers)
    board = Board("3k5/9/9/9/4r4/9/4p4/9/4R4/4K4 w - - 0 1")
    values = {move: move_value(board, move) for move in board.legal_moves()}
    by_material = searched_best(mover, board, prior_weight=0.0)
    assert values[by_material.move] == max(values.values())
    assert searched_best(mover, board, prior_weight=1e6).move == mover.best(board).move
    assert searched_best(mover, board).move in board.legal_moves()


def test_search_keeps_the_repetition_rules_last_word(movers):
    board = Board.from_moves("d9d8 i9i8 d8d9 i8i9 d9d8 i9i8 d8d9", fen="3k4R/9/9/9/9/9/9/9/9/4K4 b - - 1 1")
    # i8i9 checks, so the search would favour it; it loses by perpetual check
    assert searched_best(MoveModel(movers), board, prior_weight=0.0).move != "i8i9"


def test_search_values_a_draw_by_repetition_at_the_material_lead():
    fen = "3k5/9/9/9/9/9/9/9/R8/4K4 w - - 0 1"  # red is a rook up
    board = Board.from_moves("a1b1 d9d8 b1a1 d8d9 a1b1 d9d8", fen=fen)
    assert material_lead(board) == 9.0
    # b1a1 lets black's d8d9 make the position occur a third time: red would give up its rook's worth
    assert move_value(board, "b1a1") == -9.0 and move_value(board, "b1c1") == 0.0
    board.push("b1a1")
    assert material_lead(board) == -9.0 and move_value(board, "d8d9") == 9.0  # black, behind, takes the draw
    board.push("d8d9")
    assert board.outcome().reason == "repetition"


_SILENT_ENGINE = """import sys
for line in sys.stdin:  # answers the handshake, then searches for good: never a bestmove
    if line.startswith("uci"):
        print("id name silent\\nuciok", flush=True)
    elif line.startswith("isready"):
        print("readyok", flush=True)
"""


def test_an_engine_that_never_answers_is_killed_and_named(tmp_path):
    import sys
    import time

    from edgeinfer.export.xiangqi_data import EngineTimeout, UciEngine

    path = tmp_path / "silent-engine"
    path.write_text(f"#!{sys.executable}\n{_SILENT_ENGINE}")
    path.chmod(0o755)
    engine = UciEngine(str(path), timeout_s=0.5)
    assert engine.name == "silent"
    started = time.monotonic()
    with pytest.raises(EngineTimeout, match="no 'bestmove' within 0.5 s, killed"):
        engine.best_move([], 1000)
    assert time.monotonic() - started < 10 and engine._proc.poll() is not None


def test_a_hung_game_is_replayed_on_a_fresh_engine_with_its_own_seed(monkeypatch):
    from edgeinfer.export import xiangqi_data

    engines, seeds = iter(["hangs too", "answers"]), []

    def play_game(engine, seed, *settings):
        seeds.append(seed)
        if engine != "answers":
            raise xiangqi_data.EngineTimeout("engine gave no 'bestmove' within 60 s, killed")
        return {"moves": "h2e2"}

    monkeypatch.setattr(xiangqi_data, "play_game", play_game)
    monkeypatch.setattr(xiangqi_data, "UciEngine", lambda path: next(engines))
    monkeypatch.setattr(xiangqi_data, "_worker", {"engine_path": "engine", "engine": "hangs at first",
                                                   "settings": (3, 1000, 300, (2, 8)), "policy": None})
    assert xiangqi_data._play_index((7, 0)) == {"index": 7, "seed": seeds[0], "moves": "h2e2"}
    assert seeds == [xiangqi_data.game_seed(3, 7, 0)] * 3
    monkeypatch.setattr(xiangqi_data, "_worker", {**xiangqi_data._worker, "engine": "hangs"})
    monkeypatch.setattr(xiangqi_data, "UciEngine", lambda path: "hangs")
    with pytest.raises(RuntimeError, match="game 7: the engine hung 3 times on it"):
        xiangqi_data._play_index((7, 0))


_FIRST_MOVE_ENGINE = """import sys
from edgeinfer.xiangqi import Board, iccs_to_uci, uci_to_iccs
moves = []
for line in sys.stdin:  # a deterministic UCI engine: its best move is the first legal one
    if line.startswith("uci"):
        print("id name first-move\\nuciok", flush=True)
    elif line.startswith("isready"):
        print("readyok", flush=True)
    elif line.startswith("position"):
        moves = [uci_to_iccs(m) for m in line.split()[3:]]
    elif line.startswith("go"):
        print("bestmove", iccs_to_uci(Board.from_moves(moves, max_plies=None).legal_moves()[0]), flush=True)
"""


def test_repeated_games_are_played_again_with_the_next_seed(tmp_path):
    import sys

    from edgeinfer.export.xiangqi_data import load_games, main

    engine = tmp_path / "first-move-engine"
    engine.write_text(f"#!{sys.executable}\n{_FIRST_MOVE_ENGINE}")
    engine.chmod(0o755)
    # no random opening and 4 plies: most engine-against-engine games are one and the same game
    main(["--games", "12", "--out", str(tmp_path / "data"), "--engine", str(engine), "--max-plies", "4",
          "--opening-plies", "0-0", "--workers", "2"])
    games = load_games(tmp_path / "data" / "games.jsonl")
    assert sorted(g["index"] for g in games) == list(range(12))
    assert len({g["moves"] for g in games}) == 12
    assert any(g["seed"] & 0xFF for g in games)  # some index went on to a later seed (game_seed's attempt byte)


def test_a_stage_trains_on_its_data_folders_and_is_measured_on_the_held_out_one(tmp_path):
    from edgeinfer.export.train_xiangqi import training_splits
    from edgeinfer.export.xiangqi_data import split_of

    plies = {}
    for first_seed, (folder, count) in enumerate((("old", 40), ("fresh", 30))):
        (tmp_path / folder).mkdir()
        games = []
        for index in range(count):
            moves = " ".join(_random_game(4 + index % 8, seed=1000 * first_seed + index).move_stack)
            games.append({"index": index, "moves": moves, "labels": moves})
        (tmp_path / folder / "games.jsonl").write_text("".join(json.dumps(g) + "\n" for g in games))
        plies[folder] = {name: sum(len(g["moves"].split()) for g in games if split_of(g["moves"]) == name)
                         for name in ("train", "valid", "test")}
    assert all(plies["old"].values())  # 40 games reach every split
    assert plies["fresh"]["valid"] == 0  # a folder with an empty split: cached, then read back by the second call

    fresh_only = training_splits([tmp_path / "fresh"], tmp_path / "old", workers=1)
    assert {name: len(parts[0]) for name, parts in fresh_only.items()} == {
        "train": plies["fresh"]["train"], "valid": plies["old"]["valid"], "test": plies["old"]["test"]}
    both = training_splits([tmp_path / "old", tmp_path / "fresh"], tmp_path / "old", workers=1)
    assert len(both["train"][0]) == plies["old"]["train"] + plies["fresh"]["train"]
    assert all(len(part) == len(both["train"][0]) for part in both["train"])
