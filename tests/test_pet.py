"""MLM pretraining data and training pieces, and PET's training-side scores against the served bundle's cloze."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
jieba = pytest.importorskip("jieba")

from edgeinfer.export import mlm_data, pet, train_mlm
from edgeinfer.export.train_mlm import CLS, IGNORE, MASK, PAD, SEP

CORPUS = ["刘备与关羽、张飞桃园结义。", "这部电影很好看，我很满意。", "他做了一件坏事。", "这是一件好事。"] * 3


@pytest.fixture(scope="module")
def tokenizer():
    return mlm_data.train_tokenizer(CORPUS, 100)


def test_word_starts_follow_jieba(tokenizer) -> None:
    text = "刘备与关羽桃园结义"
    enc = tokenizer.encode(text, add_special_tokens=False)
    words = [w for w, _, _ in jieba.tokenize(text)]
    starts = mlm_data.word_starts(text, enc.offsets)
    expected = [i == 0 for w in words for i in range(len(w))]  # one token per CJK character
    assert starts == expected and sum(starts) == len(words)


def test_pack_and_save_round_trip(tokenizer, tmp_path) -> None:
    ids, starts = mlm_data.pack(["这是一件好事。他做了一件坏事。", "好" * 30], tokenizer, seq=16)
    assert ids.dtype == np.uint16 and ids.shape[1] == 16
    real = ids != PAD
    for row, keep in zip(ids, real, strict=True):
        assert row[0] == CLS and row[keep.sum() - 1] == SEP and not row[keep.sum():].any()
    assert tokenizer.decode(ids[0][1:8].tolist()).replace(" ", "") == "这是一件好事。"
    mlm_data.save_rows(tmp_path / "rows.npz", ids, starts)
    back_ids, back_starts = mlm_data.load_rows(tmp_path / "rows.npz")
    assert (back_ids == ids).all() and (back_starts == starts).all()


def test_whole_words_are_masked_together() -> None:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(MASK + 1, 50, (64, 32), generator=generator)
    ids[:, 0], ids[:, -1], ids[:8, 20:] = CLS, SEP, PAD
    starts = torch.rand(64, 32, generator=generator) < 0.5
    starts[:, 0] = starts[:, -1] = True
    inputs, targets = train_mlm.mask_whole_words(ids, starts, 0.3, 50, torch.Generator().manual_seed(1))
    picked = targets != IGNORE
    assert not picked[:, 0].any() and not picked[:, -1].any() and not picked[:8, 20:].any()
    assert (targets[picked] == ids[picked]).all() and (inputs[~picked] == ids[~picked]).all()
    word = torch.cumsum(starts.long(), 1)
    for b in range(64):  # a word's real tokens are all picked or none
        for w in word[b].unique():
            inside = (word[b] == w) & (ids[b] > MASK)
            assert picked[b][inside].all() or not picked[b][inside].any()
    share = picked.sum() / (ids > MASK).sum()
    assert 0.2 < share < 0.4 and 0.7 < (inputs[picked] == MASK).float().mean() < 0.9


def test_schedule_warms_up_then_decays_to_a_tenth() -> None:
    assert train_mlm.learning_rate(0.025, 1.0) == pytest.approx(0.5)
    assert train_mlm.learning_rate(0.05, 1.0) == pytest.approx(1.0)
    assert train_mlm.learning_rate(1.0, 1.0) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    m = train_mlm.new_model(tokenizer.get_vocab_size(), 24, hidden=32, layers=2, heads=4, intermediate=40)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)
    return m.eval()


def test_transformers_copy_computes_the_same_logits(model) -> None:
    hf = train_mlm.to_transformers(model)
    ids = torch.tensor([[CLS, 7, 8, MASK, 9, SEP, PAD], [CLS, 10, 11, 12, 13, 14, SEP]])
    mask = (ids != PAD).long()
    with torch.no_grad():
        ours = model(ids, mask, torch.zeros_like(ids))
        theirs = hf(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits
    assert (ours - theirs)[mask.bool()].abs().max() < 1e-5


def test_fine_tuned_model_serves_the_same_scores(model, tokenizer, tmp_path) -> None:
    """PET's training-side label scores equal the exported bundle's cloze scores, before and after a few steps."""
    import edgeinfer

    labels = {"好": "positive", "坏": "negative"}
    cloze = pet.PetPattern(tokenizer, "{text}这是___事。", labels, model.cfg.max_positions)
    examples = [pet.Example("电影很好看", "positive"), pet.Example("他做了坏事", "negative")]
    before = cloze.label_scores(model, [e.text for e in examples]).detach()
    pet.fit(model, lambda texts: cloze.label_scores(model, texts), examples, cloze.names, steps=5, lr=1e-2,
            batch_size=2, seed=0)
    with torch.no_grad():
        after = cloze.label_scores(model, [e.text for e in examples])
    assert not torch.allclose(before, after)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    manifest = train_mlm.export_bundle(model, tmp_path / "tokenizer.json", tmp_path / "ckpt", tmp_path / "bundle")
    assert manifest["parity"]["max_abs_diff"] <= 1e-4 and manifest["fused_ops"] == {"MultiHeadAttention": 2, "Gelu": 3}
    served = edgeinfer.load(tmp_path / "bundle", device="cpu", threads=1)
    found = served.cloze([e.text for e in examples], pattern="{text}这是___事。", labels=labels)
    for row, result in zip(after, found, strict=True):
        # the runtime's words are log-probabilities; training's label scores are the same, one word per label
        assert [result.words[w] for w in labels] == pytest.approx(
            [float(row[cloze.names.index(n)]) for n in labels.values()], abs=1e-4)


def test_few_shot_draws_are_balanced_and_seeded() -> None:
    pool = [pet.Example(f"t{i}", "positive" if i % 3 else "negative") for i in range(60)]
    draw = pet.few_shot(pool, 4, seed=1)
    assert [e.label for e in draw].count("positive") == 4 == [e.label for e in draw].count("negative")
    assert draw == pet.few_shot(pool, 4, seed=1) and draw != pet.few_shot(pool, 4, seed=2)
