"""BertForMaskedLM bundles: checked import, fused export, parity with transformers, the torch-free MaskedLM."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import perturb_vectors, wordpiece_tokenizer

import edgeinfer
import edgeinfer.bundle
from edgeinfer.bundle import Manifest
from edgeinfer.cli import main
from edgeinfer.errors import InputError
from edgeinfer.mlm import MaskedLM

TEXTS = ["The poem was written by Li Bai.", "床前明月光, the moon light before bed."]
MASKED = "The poem was [MASK] by [MASK] Bai."


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(transformers model, bundle folder): a tiny random BertForMaskedLM exported by the CLI."""
    root = tmp_path_factory.mktemp("mlm")
    tok = wordpiece_tokenizer()
    config = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37, max_position_embeddings=48)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    perturb_vectors(model)
    model.save_pretrained(root / "ckpt")
    tok.save(str(root / "ckpt" / "tokenizer.json"))
    assert main(["export", "--from-hf", str(root / "ckpt"), "--task", "masked-lm", "--out", str(root / "b")]) == 0
    return model, root / "b"


@pytest.fixture(scope="module")
def mlm(exported) -> MaskedLM:
    folder, manifest = Manifest.read(exported[1])
    return MaskedLM(folder, manifest, device="cpu", threads=1)


def _hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()


def test_manifest_parity_and_fusion(exported) -> None:
    _, bundle = exported
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task"] == "masked-lm" and manifest["source"]["architecture"] == "BertForMaskedLM"
    assert manifest["parity"]["max_abs_diff"] <= 1e-4
    assert manifest["fused_ops"] == {"MultiHeadAttention": 2, "Gelu": 3}  # one per layer and the head's transform
    assert not {"Softmax", "Erf", "Tanh"} & set(manifest["op_census"])
    assert manifest["special_tokens"] == {"cls": 2, "sep": 3, "pad": 0, "unk": 1, "mask": 4}


def test_logits_equal_transformers_on_a_ragged_batch(exported, mlm) -> None:
    model, _ = exported
    tok = wordpiece_tokenizer()
    got = mlm.logits([*TEXTS, [2, 7, 8, 3]])
    for text, logits in zip(TEXTS, got, strict=False):
        ids = tok.encode(text).ids  # [CLS] text [SEP]
        assert logits.shape == (len(ids), tok.get_vocab_size())
        assert np.abs(logits - _hf_logits(model, ids)).max() <= 1e-4
    assert np.abs(got[2] - _hf_logits(model, [2, 7, 8, 3])).max() <= 1e-4


def test_fill_gives_transformers_top_tokens_per_mask(exported, mlm) -> None:
    model, _ = exported
    tok = wordpiece_tokenizer()
    ids = tok.encode(MASKED).ids
    logits = _hf_logits(model, ids)
    found = mlm.fill(MASKED, top_k=3)
    positions = [i for i, t in enumerate(ids) if t == 4]
    assert len(positions) == len(found) == 2
    for position, candidates in zip(positions, found, strict=True):
        probs = np.exp(logits[position] - logits[position].max())
        probs /= probs.sum()
        assert [c.id for c in candidates] == list(np.argsort(-probs)[:3])
        assert [c.token for c in candidates] == [tok.id_to_token(c.id) for c in candidates]
        np.testing.assert_allclose([c.score for c in candidates], np.sort(probs)[::-1][:3], rtol=1e-4)


def test_bad_inputs_are_refused(mlm) -> None:
    with pytest.raises(InputError, match="no mask token"):
        mlm.fill("the moon")
    with pytest.raises(InputError, match="over the model's 48 positions"):
        mlm.logits(["moon " * 60])
    with pytest.raises(InputError, match="token ids"):
        mlm.logits([[2, 10**6]])
    with pytest.raises(InputError, match="top_k"):
        mlm.fill(MASKED, top_k=0)


def test_untied_decoder_is_refused() -> None:
    from edgeinfer.export.hf_import import import_bert_mlm
    from edgeinfer.export.onnx_export import ExportError

    config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=9, tie_word_embeddings=False)
    model = transformers.BertForMaskedLM(config)
    with pytest.raises(ExportError, match="untied"):
        import_bert_mlm(model.state_dict(), config)


def test_load_opens_a_masked_lm(exported) -> None:
    assert isinstance(edgeinfer.load(exported[1], device="cpu", threads=1), MaskedLM)
