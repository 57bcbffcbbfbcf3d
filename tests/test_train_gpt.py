"""The generic GPT training loop: the moving average of the weights it can hand back instead of the last ones, and a
loss that starts late running the last block only where it is needed."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from edgeinfer.export.gpt import GPT, GPTConfig
from edgeinfer.export.train_gpt import TrainConfig, train


def _batches(seed: int):
    generator = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(0, 20, (4, 12), generator=generator)
        yield ids, ids.roll(-1, dims=1), None


def _trained(tmp_path, steps: int, ema: float | None) -> tuple[GPT, dict]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, n_positions=12, n_embd=16, n_layer=1, n_head=2))
    cfg = TrainConfig(steps=steps, lr=1e-2, warmup=1, eval_every=2, ema=ema)
    log = train(model, _batches(1), lambda: iter([next(_batches(2))]), cfg, tmp_path)
    return model, log


def _same_weights(a: GPT, b: GPT) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_decay_of_0_hands_back_the_last_weights(tmp_path):
    last, log = _trained(tmp_path, 5, None)
    averaged, ema_log = _trained(tmp_path, 5, 0.0)
    assert _same_weights(last, averaged)
    assert ema_log["valid"] == ema_log["valid_raw"] == log["valid"]


def test_a_decay_of_1_keeps_the_first_steps_weights(tmp_path):
    first, _ = _trained(tmp_path, 1, None)
    averaged, log = _trained(tmp_path, 5, 1.0)
    last, _ = _trained(tmp_path, 5, None)
    assert _same_weights(first, averaged) and not _same_weights(first, last)
    assert log["valid"] != log["valid_raw"]  # validation reads the average; the raw weights' loss is logged beside it


@pytest.mark.parametrize("prefix, pre_ln", [(20, True), (0, True), (0, False)])
def test_a_loss_that_starts_late_equals_the_full_one_with_its_gradients(prefix, pre_ln):
    """`GPT.loss` runs the last block and the LM head from the first target on (prefix LM or causal, pre- or
    post-norm): the loss and every weight's gradient equal those of the whole sequence's logits."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, n_positions=32, n_embd=32, n_layer=3, n_head=4, bidirectional_prefix=prefix,
                    n_segments=5, pre_ln=pre_ln)
    trimmed, whole = GPT(cfg), GPT(cfg)
    whole.load_state_dict(trimmed.state_dict())
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 50, (6, 26), generator=generator)
    segments = torch.randint(0, 5, (6, 26), generator=generator)
    targets = torch.full_like(ids, -100)
    targets[:, 21:25] = ids[:, 22:26]
    targets[0, 21] = -100  # the first target column is set in some rows only
    logits = whole.training_logits(ids, segments)
    reference = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1), ignore_index=-100)
    loss = trimmed.loss(ids, targets, segments)
    assert torch.allclose(loss, reference, atol=1e-6)
    loss.backward()
    reference.backward()
    for (name, a), b in zip(trimmed.named_parameters(), whole.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    assert torch.allclose(trimmed.training_logits(ids, segments, from_position=21), logits[:, 21:], atol=1e-6)
