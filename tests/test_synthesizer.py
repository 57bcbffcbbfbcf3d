"""Synthesizer attention (export/synthesizer.py, kernels/synthesizer.py): cached decoding equals the full forward,
bundles match PyTorch within the parity tolerance, and the runtime decodes a values-only cache exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

import edgeinfer

torch = pytest.importorskip("torch")

KINDS = [("dense", 0), ("random", 0), ("random", 4), ("dense+dot", 0)]
IDS = [f"{kind}-r{rank}" for kind, rank in KINDS]
VOCAB = 41


def _model(kind: str, rank: int, n_segments: int = 0):
    """A tiny GPT with large weights, so greedy continuations vary and ties are unlikely."""
    from edgeinfer.export.gpt import GPT, GPTConfig

    torch.manual_seed(5)
    model = GPT(GPTConfig(vocab_size=VOCAB, n_positions=24, n_embd=32, n_layer=2, n_head=4, n_segments=n_segments,
                          attention_kind=kind, synth_rank=rank)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(std=0.3)
    return model


@pytest.fixture(scope="module", params=KINDS, ids=IDS)
def exported(request, tmp_path_factory):
    from edgeinfer.export.onnx_export import export_gpt_bundle

    kind, rank = request.param
    model = _model(kind, rank)
    folder = tmp_path_factory.mktemp("synth") / f"{kind}-{rank}"
    manifest = export_gpt_bundle(model, folder)
    return model, folder, manifest


@pytest.mark.parametrize(("kind", "rank"), KINDS, ids=IDS)
def test_cached_steps_equal_the_full_forward(kind, rank):
    model = _model(kind, rank)
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model.training_logits(ids)
        past, steps = model.empty_cache(2), []
        for t in range(ids.shape[1]):
            logits, past = model(ids[:, t : t + 1], torch.full((2, 1), t), torch.ones(2, t + 1, dtype=torch.long),
                                 torch.zeros(2, 1, dtype=torch.long), past)
            steps.append(logits)
    np.testing.assert_allclose(torch.cat(steps, 1).numpy(), full.numpy(), atol=1e-5)
    assert len(past) == len(model.cfg.cache_parts) * model.cfg.n_layer


def test_bundle_logits_equal_pytorch_and_manifest_describes_the_cache(exported):
    model, folder, manifest = exported
    assert manifest["parity"]["max_abs_diff"] <= 1e-4
    assert manifest["attention"] == "standard" and manifest["kv_cache"]["layout"] == "concat"
    assert manifest["model"]["attention_kind"] == model.cfg.attention_kind
    values_only = model.cfg.attention_kind != "dense+dot"
    kv = manifest["kv_cache"]
    assert (kv["past_key"] is None and kv["present_key"] is None) == values_only
    past = [spec["name"] for spec in manifest["inputs"] if spec["name"].startswith("past_key_values.")]
    assert past == ([f"past_key_values.{i}.value" for i in range(2)] if values_only else
                    [f"past_key_values.{i}.{part}" for i in range(2) for part in ("key", "value")])
    loaded = edgeinfer.load(folder, device="cpu")
    ids = np.random.default_rng(1).integers(0, VOCAB, size=(3, 11))
    with torch.no_grad():
        reference = model.training_logits(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(loaded.logits(ids), reference, atol=1e-4)


def test_left_padded_rows_read_their_own_positions(exported):
    _, folder, _ = exported
    loaded = edgeinfer.load(folder, device="cpu")
    ids = np.array([[5, 6, 7, 8, 9], [0, 0, 3, 4, 5]])
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    np.testing.assert_allclose(loaded.logits(ids, attention_mask=mask)[1, 2:], loaded.logits(ids[1:, 2:])[0],
                               atol=1e-5)


def _greedy_without_cache(loaded, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(loaded.logits(np.array([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_greedy_with_the_cache_equals_greedy_without(exported):
    _, folder, _ = exported
    loaded = edgeinfer.load(folder, device="cpu")
    prompts = [[3, 9, 27, 1], [14], [8, 8, 30, 2, 19, 7]]  # ragged: left padding and holes in the cache
    expected = [_greedy_without_cache(loaded, p, 12) for p in prompts]
    batch = loaded.generate(prompts, max_new_tokens=12, do_sample=False)
    assert [g.token_ids for g in batch] == expected
    one_by_one = loaded.generate(prompts, max_new_tokens=12, do_sample=False, max_active=1)
    assert [g.token_ids for g in one_by_one] == expected
    speculated = loaded.generate(prompts, max_new_tokens=12, do_sample=False, speculate=3)
    assert [g.token_ids for g in speculated] == expected


def test_a_kept_prefix_continues_like_a_fresh_run(exported):
    _, folder, _ = exported
    loaded = edgeinfer.load(folder, device="cpu")
    history, turn = [3, 14, 15, 9, 6], [8, 7]
    continued = loaded.generate([turn], prefix=loaded.prefill(history), max_new_tokens=8, do_sample=False)[0]
    assert continued.token_ids == _greedy_without_cache(loaded, history + turn, 8)


def test_segments_and_post_ln_export(tmp_path):
    from edgeinfer.export.gpt import GPT, GPTConfig
    from edgeinfer.export.onnx_export import export_gpt_bundle

    torch.manual_seed(2)
    model = GPT(GPTConfig(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2, n_segments=2,
                          pre_ln=False, attention_kind="dense")).eval()
    export_gpt_bundle(model, tmp_path / "b", task="chat")
    ids = np.random.default_rng(3).integers(0, VOCAB, size=(2, 6))
    types = np.array([[0, 0, 1, 1, 1, 0]] * 2)
    with torch.no_grad():
        reference = model.training_logits(torch.from_numpy(ids), torch.from_numpy(types)).numpy()
    loaded = edgeinfer.load(tmp_path / "b", device="cpu")
    np.testing.assert_allclose(loaded.logits(ids, token_type_ids=types), reference, atol=1e-4)


@pytest.mark.parametrize(("attention", "mask"), [("contrib", "key"), ("standard", "query_key")])
def test_export_refuses_targets_it_cannot_write(tmp_path, attention, mask):
    from edgeinfer.export.onnx_export import ExportError, export_gpt_bundle

    with pytest.raises(ExportError, match="synthesizer attention"):
        export_gpt_bundle(_model("dense", 0), tmp_path / "b", attention=attention, attention_mask=mask)
    assert not (tmp_path / "b").exists()


def test_unknown_attention_kind_is_refused():
    from edgeinfer.export.gpt import GPTConfig

    with pytest.raises(ValueError, match="unknown attention kind 'linear'"):
        GPTConfig(vocab_size=VOCAB, attention_kind="linear")


@pytest.mark.parametrize("edit", [{"present_key": "present.{layer}.key"}, {"past_key": 3}])
def test_manifest_key_patterns_null_together(exported, tmp_path, edit):
    from edgeinfer.errors import BundleError

    _, folder, manifest = exported
    if manifest["kv_cache"]["past_key"] is not None:
        pytest.skip("the mixture caches keys")
    copy = tmp_path / "b"
    copy.mkdir()
    for file in folder.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    data = json.loads((copy / "manifest.json").read_text())
    data["kv_cache"].update(edit)
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="kv_cache"):
        edgeinfer.load(copy, device="cpu", verify=False)
