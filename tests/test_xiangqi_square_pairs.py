"""The square-pair move head: training and the runtime number square pairs alike, the bundle's scores equal PyTorch's
log-softmax over the legal moves (on the position, and averaged with its mirror), the training loss over all pairs or
the legal moves, train_xiangqi --head squares trains and exports one, a bundle reads back into PyTorch, and a broken
square-pair manifest is refused by name."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from test_xiangqi_mover import MIRROR, _random_game

import edgeinfer
from edgeinfer.errors import BundleError, InputError
from edgeinfer.xiangqi import Board
from edgeinfer.xiangqi.features import RICHEST, SEGMENTS, square_segments
from edgeinfer.xiangqi.mover import MoveModel
from edgeinfer.xiangqi.tokens import (
    MIRRORED_SQUARE,
    PROMPT_TOKENS,
    VOCAB,
    board_tokens,
    move_tokens,
    oriented_move,
    square_pair,
)

torch = pytest.importorskip("torch")


def _tiny_policy(segments: bool = True):
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.xiangqi_policy import SquarePolicy

    torch.manual_seed(7)
    gpt = GPT(GPTConfig(vocab_size=len(VOCAB), n_positions=PROMPT_TOKENS + 4, n_embd=32, n_layer=2, n_head=4,
                        bidirectional_prefix=PROMPT_TOKENS, n_segments=SEGMENTS[RICHEST] if segments else 0))
    model = SquarePolicy(gpt, head_dim=16)
    with torch.no_grad():
        for p in model.parameters():  # large weights: scores far from uniform
            p.mul_(2)
        model.pair_bias.normal_()
    return model.eval()


@pytest.fixture(scope="module")
def square_pairs(tmp_path_factory):
    """A torch square-pair model reading the richest square features, and its bundle."""
    from edgeinfer.export.xiangqi_policy import export_policy_bundle

    model = _tiny_policy()
    path = tmp_path_factory.mktemp("xq") / "pairs"
    export_policy_bundle(model, path, extra={"input": "board", "vocab": VOCAB, "square_features": RICHEST})
    return model, edgeinfer.load(path, device="cpu")


def torch_pair_scores(model, board: Board) -> dict[str, float]:
    """Each legal move's log-probability under PyTorch's softmax over the legal moves' square-pair logits."""
    moves = board.legal_moves()
    ids = torch.tensor([board_tokens(board.squares, board.side, seen=board.repetitions() > 1)])
    segments = torch.tensor([[0, *square_segments(board, RICHEST)]])
    with torch.no_grad():
        logits = model(ids, segments).double().flatten()
    chosen = torch.log_softmax(logits[[square_pair(oriented_move(m, board.side)) for m in moves]], 0)
    return {move: float(chosen[i]) for i, move in enumerate(moves)}


def test_training_and_the_runtime_number_square_pairs_alike():
    from edgeinfer.export.xiangqi_policy import move_squares

    assert square_pair("a0a1") == 0 * 90 + 9
    assert square_pair("i9i8") == 89 * 90 + 80
    moves = ["h2e2", "b0c2", "a3a4", "i9i0", "e1e0"]
    assert move_squares(torch.tensor([move_tokens(m) for m in moves])).tolist() == [square_pair(m) for m in moves]
    assert [MIRRORED_SQUARE[square_pair(m) // 90] * 90 + MIRRORED_SQUARE[square_pair(m) % 90] for m in moves] == [
        square_pair(m.translate(MIRROR)) for m in moves]


@pytest.mark.parametrize("mirror", [False, True])
def test_the_loss_is_the_cross_entropy_at_the_labelled_pair_over_all_pairs_or_the_legal_moves(mirror):
    from edgeinfer.export.train_xiangqi import collate, game_positions

    model = _tiny_policy()
    board = _random_game(30, 3)
    game = {"moves": " ".join(board.move_stack), "labels": " ".join(board.move_stack)}
    squares, labels, _, seen, segments, legal = game_positions(game)
    ids, targets, types, pairs = collate(squares, labels, seen, segments, np.full(len(squares), mirror), RICHEST, legal)
    with torch.no_grad():
        loss = float(model.loss(ids, targets, types))
        legal_loss = float(model.loss(ids, targets, types, pairs))
        logits = model(ids[:, :PROMPT_TOKENS], types[:, :PROMPT_TOKENS]).flatten(1).double()
    replay, expected, expected_legal = Board(), [], []
    for i, move in enumerate(board.move_stack):
        def seen_pair(m: str) -> int:  # the move as the example shows it
            m = oriented_move(m, replay.side)
            return square_pair(m.translate(MIRROR) if mirror else m)
        label = seen_pair(move)
        expected.append(-float(torch.log_softmax(logits[i], 0)[label]))
        moves = [seen_pair(m) for m in replay.legal_moves()]
        expected_legal.append(-float(torch.log_softmax(logits[i, moves], 0)[moves.index(label)]))
        replay.push(move)
    assert loss == pytest.approx(np.mean(expected), rel=1e-5)
    assert legal_loss == pytest.approx(np.mean(expected_legal), rel=1e-5)
    assert legal_loss < loss  # the legal moves' share of the probability is renormalised


@pytest.mark.parametrize("plies, seed", [(0, 0), (1, 1), (9, 4), (30, 5), (60, 6)])
def test_scores_equal_pytorch_on_the_position_and_with_its_mirror(square_pairs, plies, seed):
    model, bundle = square_pairs
    board = _random_game(plies, seed)
    alone = torch_pair_scores(model, board)
    scored = MoveModel(bundle).score(board)
    assert {s.move for s in scored} == set(board.legal_moves())
    for s in scored:
        assert s.logprob == pytest.approx(alone[s.move], abs=1e-4)
        assert s.probability == pytest.approx(math.exp(alone[s.move]), abs=1e-5)
    assert scored[0].move == max(alone, key=alone.get)
    # the mirror's view is the mirrored position itself, scored by PyTorch on its own prompt and features
    mirrored = torch_pair_scores(model, Board.from_moves([m.translate(MIRROR) for m in board.move_stack]))
    with_mirror = {s.move: s.logprob for s in MoveModel(bundle, mirror=True).score(board)}
    views = 1 if plies == 0 else 2  # the start is its own mirror: one view
    for move, score in with_mirror.items():
        expected = alone[move] if views == 1 else (alone[move] + mirrored[move.translate(MIRROR)]) / 2
        assert score == pytest.approx(expected, abs=1e-4)
    if views == 2:
        assert max(abs(with_mirror[m] - alone[m]) for m in alone) > 1e-3  # the mirror's view does count


def test_move_logits_refuse_prompts_of_another_shape(square_pairs):
    _, bundle = square_pairs
    with pytest.raises(InputError, match=r"prompts must be \(batch, 91\) token ids in \[0, 36\)"):
        bundle.move_logits(np.zeros((1, 90), dtype=np.int64), np.zeros((1, 90), dtype=np.int64))
    with pytest.raises(InputError, match="prompts must be"):
        bundle.move_logits(np.full((1, 91), 36), np.zeros((1, 91), dtype=np.int64))
    with pytest.raises(InputError, match="reads square segments"):
        bundle.move_logits(np.zeros((1, 91), dtype=np.int64))


def _rewritten(source, tmp_path, change) -> str:
    """A copy of a bundle folder with its manifest changed by `change` (digests rewritten, so only the change fails)."""
    import shutil

    from edgeinfer.bundle import Manifest

    target = tmp_path / "changed"
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    change(manifest)
    manifest.pop("digests", None)
    Manifest(manifest).write(target)
    return str(target)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["model"]["move_head"].update(kind="rows"), r"model.move_head.kind 'rows' is not one of"),
    (lambda m: m["model"]["move_head"].pop("dim"), r"'model.move_head.dim' is missing"),
    (lambda m: m["outputs"][0].update(name="logits"), r"outputs are \['logits'\]; a square-pair move head's graph"),
    (lambda m: m["model"].update(n_segments=0), r"inputs are \['input_ids', 'token_type_ids'\]"),
    (lambda m: m["model"].update(max_positions=95), "max_positions is 95; a square-pair move head reads the 91"),
    (lambda m: m["model"].update(vocab_size=4000), "the graph fails on a prompt of token id 3999"),
])
def test_a_broken_square_pair_manifest_is_refused_by_name(square_pairs, tmp_path, change, message):
    _, bundle = square_pairs
    with pytest.raises(BundleError, match=message):
        edgeinfer.load(_rewritten(bundle.folder, tmp_path, change), device="cpu")


def test_decoder_commands_refuse_a_square_pair_bundle(square_pairs):
    from edgeinfer.commands.common import DECODER_TASKS, load_for

    _, bundle = square_pairs
    with pytest.raises(BundleError, match="scores square pairs, not a decoder; edgeinfer generate needs a decoder"):
        load_for("generate", bundle.folder, DECODER_TASKS, "cpu")
    assert load_for("move", bundle.folder, ("xiangqi",), "cpu").manifest["model"]["move_head"]["kind"] == "square_pairs"


def test_the_head_learns_faster_by_its_scale():
    from edgeinfer.export.train_gpt import TrainConfig, parameter_groups

    model = _tiny_policy()
    groups = parameter_groups(model, TrainConfig(lr_scale={"q.": 5.0, "k.": 5.0, "pair_bias": 5.0}))
    scaled = {id(p) for g in groups if g["lr_scale"] == 5.0 for p in g["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in scaled}
    assert names == {"q.weight", "q.bias", "k.weight", "k.bias", "pair_bias"}
    assert all(g["weight_decay"] == (0.01 if g["params"][0].dim() >= 2 else 0.0) for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize(("loss", "described"), [("all-pairs", "nats per move over the 8,100 square pairs"),
                                                ("legal", "nats per move over the legal moves' square pairs")])
def test_train_xiangqi_trains_and_exports_a_square_pair_bundle(tmp_path, loss, described):
    from edgeinfer.export.train_xiangqi import load_checkpoint, main

    games = []
    for index in range(40):
        moves = " ".join(_random_game(20 + index % 10, seed=300 + index).move_stack)
        games.append({"index": index, "moves": moves, "labels": moves})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "games.jsonl").write_text("".join(json.dumps(g) + "\n" for g in games))
    common = ["--data", str(tmp_path / "data"), "--work", str(tmp_path / "work"), "--head", "squares"]
    main([*common, "--out", str(tmp_path / "bundle"), "--steps", "40", "--lr", "3e-3", "--embd", "32", "--layers", "1",
          "--heads", "2", "--workers", "1", "--valid-positions", "200", "--head-lr-scale", "3", "--features", "control", "--loss", loss])
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    training = manifest["training"]
    assert manifest["model"]["move_head"] == {"kind": "square_pairs", "dim": 64}
    assert manifest["square_features"] == "control" and manifest["model"]["n_segments"] == SEGMENTS["control"]
    assert training["loss"] == described and training["steps"] == 40
    # on the test split's random game: over all pairs it learnt where pieces go (from 9.0 nats); over the legal
    # moves random labels leave nothing to learn, so it stays near the uniform guess, log(legal moves) (3.66 nats)
    if loss == "all-pairs":
        assert training["test_loss"] < math.log(90 * 90) - 3
    else:
        assert 3.4 < training["test_loss"] < 3.9
    log = json.loads((tmp_path / "work" / "training.json").read_text())
    assert log["config"]["lr_scale"] == {"q.": 3.0, "k.": 3.0, "pair_bias": 3.0}

    bundle = edgeinfer.load(tmp_path / "bundle", device="cpu")
    model = load_checkpoint(tmp_path / "work" / "model.pt").eval()
    board = _random_game(15, 9)
    prompt = np.array([board_tokens(board.squares, board.side)])
    segments = np.array([[0, *square_segments(board, "control")]])
    with torch.no_grad():
        expected = model(torch.from_numpy(prompt), torch.from_numpy(segments)).numpy()
    np.testing.assert_allclose(bundle.move_logits(prompt, segments), expected, atol=1e-4)
    assert MoveModel(bundle).best(board).move in board.legal_moves()

    main([*common, "--out", str(tmp_path / "again"), "--export-only", "--features", "control"])
    again = edgeinfer.load(tmp_path / "again", device="cpu")
    np.testing.assert_allclose(again.move_logits(prompt, segments), expected, atol=1e-4)


def test_warm_start_takes_a_square_pair_checkpoint_or_bundle_whole_or_a_character_model_as_the_trunk(square_pairs, tmp_path):
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.train_xiangqi import save_checkpoint, warm_start_squares
    from edgeinfer.export.xiangqi_policy import SquarePolicy

    trained, bundle = square_pairs
    save_checkpoint(trained, tmp_path / "pairs.pt")
    save_checkpoint(trained.gpt, tmp_path / "characters.pt")
    ids = torch.tensor([board_tokens(Board().squares, Board().side)])
    segments = torch.tensor([[0, *square_segments(Board(), RICHEST)]])

    def fresh() -> SquarePolicy:
        torch.manual_seed(11)
        return SquarePolicy(GPT(GPTConfig(**trained.cfg.to_dict())), head_dim=16).eval()

    whole, trunk = fresh(), fresh()
    warm_start_squares(whole, tmp_path / "pairs.pt")
    warm_start_squares(trunk, tmp_path / "characters.pt")
    with torch.no_grad():
        torch.testing.assert_close(whole(ids, segments), trained(ids, segments))
        for name, value in trained.gpt.state_dict().items():
            torch.testing.assert_close(trunk.gpt.state_dict()[name], value)
        assert not torch.equal(trunk.q.weight, trained.q.weight)  # the head starts fresh
    from_bundle = fresh()
    warm_start_squares(from_bundle, bundle.folder)  # read back from the graph
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(from_bundle.state_dict()[name], value, atol=0, rtol=0)


def test_a_square_pair_bundle_reads_back_only_as_itself(square_pairs, tmp_path):
    """The shipped square-pair bundle reads back to a model whose logits are the graph's; a GPT reader refuses it, a
    graph whose head computes something else from the same weights is refused by the logits check."""
    import onnx

    from edgeinfer.bundle import Manifest
    from edgeinfer.export.bundle_import import (
        gpt_from_bundle,
        square_policy_from_bundle,
    )
    from edgeinfer.loader import default_bundle

    shipped = default_bundle("xiangqi")
    model = square_policy_from_bundle(shipped).eval()
    board = _random_game(30, 5)
    prompt = np.array([board_tokens(board.squares, board.side)])
    segments = np.array([[0, *square_segments(board, RICHEST)]])
    with torch.no_grad():
        expected = model(torch.from_numpy(prompt), torch.from_numpy(segments)).numpy()
    np.testing.assert_allclose(edgeinfer.load(shipped, device="cpu").move_logits(prompt, segments), expected,
                               atol=1e-4)
    with pytest.raises(BundleError, match="read it with square_policy_from_bundle"):
        gpt_from_bundle(shipped)
    with pytest.raises(BundleError, match="not a square-pair bundle"):
        square_policy_from_bundle(default_bundle("xiangqi-chars"))

    _, bundle = square_pairs
    shutil.copytree(bundle.folder, tmp_path / "b")
    graph = onnx.load(str(tmp_path / "b" / "model.onnx"))
    transpose = next(node for node in graph.graph.node if node.op_type == "Transpose")
    product = next(node for node in graph.graph.node if transpose.output[0] in node.input)
    # the head's queries and keys trade places: every weight is where it was, the logits come out transposed
    transpose.input[0], product.input[0] = product.input[0], transpose.input[0]
    onnx.save(graph, str(tmp_path / "b" / "model.onnx"))
    folder, manifest = Manifest.read(tmp_path / "b", verify=False)
    manifest.write(folder)  # digests of the tampered graph: only the logits check can tell
    with pytest.raises(BundleError, match="give move logits .* away from the graph's"):
        square_policy_from_bundle(folder)
