"""A GPT bundle's weights read back into PyTorch (export/bundle_import.py): every parameter exactly as exported."""

import pytest

import edgeinfer
from edgeinfer.errors import BundleError

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(("attention", "tied", "pre_ln", "segments"),
                         [("standard", True, True, 10), ("standard", False, False, 0), ("contrib", True, True, 0)])
def test_exported_gpt_reads_back_exactly(tmp_path, attention, tied, pre_ln, segments):
    from edgeinfer.export.bundle_import import gpt_from_bundle
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.onnx_export import export_gpt_bundle

    torch.manual_seed(7)
    cfg = GPTConfig(vocab_size=41, n_positions=24, n_embd=32, n_layer=2, n_head=4, n_segments=segments,
                    pre_ln=pre_ln, tied_lm_head=tied, gelu="exact", bidirectional_prefix=5 if attention == "standard" else 0)
    model = GPT(cfg).eval()
    mask = "query_key" if cfg.bidirectional_prefix else "key"
    export_gpt_bundle(model, tmp_path / "b", attention=attention, attention_mask=mask)
    loaded = gpt_from_bundle(tmp_path / "b")
    assert loaded.cfg == cfg
    expected, got = model.state_dict(), loaded.state_dict()
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    assert (loaded.lm_head.weight is loaded.wte.weight) == tied


def test_shipped_xiangqi_bundle_reads_back_to_its_own_scores():
    """The imported model gives every legal move of a position the log-probability the shipped ONNX graph gives it."""
    from edgeinfer.export.bundle_import import gpt_from_bundle
    from edgeinfer.loader import default_bundle
    from edgeinfer.xiangqi import Board
    from edgeinfer.xiangqi.mover import MoveModel
    from edgeinfer.xiangqi.tokens import move_tokens, oriented_move

    bundle = default_bundle("xiangqi-chars")
    model = gpt_from_bundle(bundle).eval()
    mover = MoveModel(edgeinfer.load(bundle, device="cpu"), mirror=False)
    board = Board()
    for move in ("h2e2", "h9g7"):
        board.push(move)
    prompt, segments = mover.prompt(board)
    scored = mover.score(board)
    rows = [prompt + move_tokens(oriented_move(s.move, board.side)) for s in scored]
    ids = torch.tensor(rows)
    types = torch.tensor([segments + [0] * 4] * len(rows))
    with torch.no_grad():
        logprobs = torch.log_softmax(model.training_logits(ids, types), -1)
    targets = ids[:, len(prompt):]
    expected = logprobs[:, len(prompt) - 1:-1].gather(-1, targets.unsqueeze(-1)).squeeze(-1).sum(-1)
    torch.testing.assert_close(expected, torch.tensor([s.logprob for s in scored]), atol=1e-4, rtol=0)


def test_refuses_what_it_cannot_read(tmp_path):
    from edgeinfer.export.bundle_import import gpt_config_from_manifest, gpt_from_bundle
    from edgeinfer.loader import default_bundle

    with pytest.raises(BundleError, match="only GPT bundles"):
        gpt_from_bundle(default_bundle("qa"))
    manifest = {"model": {"architecture": "gpt"}, "quantization": {"weights": "int8 per channel"}}
    with pytest.raises(BundleError, match="quantized"):
        gpt_config_from_manifest(manifest)


def test_refuses_a_manifest_that_does_not_describe_its_graph(tmp_path):
    import json

    from edgeinfer.export.bundle_import import gpt_from_bundle
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.onnx_export import export_gpt_bundle

    torch.manual_seed(0)
    export_gpt_bundle(GPT(GPTConfig(vocab_size=30, n_positions=16, n_embd=16, n_layer=2, n_head=2)), tmp_path / "b")
    path = tmp_path / "b" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["model"]["pre_ln"] = False  # post-LN has no final norm
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="the graph has 5 LayerNormalization weights, the manifest's model 4 LayerNorm layers"):
        gpt_from_bundle(tmp_path / "b")
