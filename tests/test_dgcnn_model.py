"""DGCNN reader: block formula, masking invariances, focal loss, span voting."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeinfer.export.dgcnn import (
    DGCNNConfig,
    DGCNNReader,
    GatedConvBlock,
    encode,
    focal_loss,
    vote,
)


def _conv1d_same(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, dilation: int) -> np.ndarray:
    """x: (len, in); weight: (out, in, 3) -> (len, out), zero 'same' padding."""
    padded = np.pad(x, ((dilation, dilation), (0, 0)))
    taps = [padded[k * dilation : k * dilation + len(x)] for k in range(3)]
    return sum(t @ weight[:, :, k].T for k, t in enumerate(taps)) + bias


@pytest.mark.parametrize("dilation", [1, 2, 4])
def test_gated_block_matches_numpy(dilation: int) -> None:
    torch.manual_seed(0)
    dim, length = 6, 9
    block = GatedConvBlock(dim, dilation).eval()
    x = torch.randn(1, length, dim)
    mask = torch.ones(1, length, 1)
    mask[0, 7:] = 0
    got = block(x, mask)[0].detach().numpy()

    xm = x[0].numpy() * mask[0].numpy()
    h = _conv1d_same(xm, block.conv.weight.detach().numpy(), block.conv.bias.detach().numpy(), dilation)
    conv, gate = h[:, :dim], h[:, dim:]
    g = 1 / (1 + np.exp(-gate))
    want = (xm * (1 - g) + conv * g) * mask[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_block_ignores_pad_content() -> None:
    torch.manual_seed(1)
    block = GatedConvBlock(5, 2).eval()
    mask = torch.tensor([1.0] * 6 + [0.0] * 4).view(1, 10, 1)
    x = torch.randn(1, 10, 5)
    noisy = x.clone()
    noisy[0, 6:] = torch.randn(4, 5) * 100
    out, out_noisy = block(x, mask), block(noisy, mask)
    torch.testing.assert_close(out, out_noisy)
    assert torch.all(out[0, 6:] == 0)


def _reader() -> DGCNNReader:
    torch.manual_seed(2)
    return DGCNNReader(DGCNNConfig(char_vocab=30, word_vocab=20, dim=16, word_dim=8)).eval()


def test_extra_padding_changes_nothing() -> None:
    model = _reader()
    q_chars = torch.tensor([[5, 6, 7, 8]])
    q_words = torch.tensor([[3, 3, 4, 4]])
    p_chars = torch.tensor([[9, 6, 10, 11, 12, 7]])
    p_words = torch.tensor([[5, 5, 6, 7, 7, 4]])

    def pad(t: torch.Tensor, n: int) -> torch.Tensor:
        return torch.cat([t, torch.zeros(1, n, dtype=t.dtype)], dim=1)

    with torch.no_grad():
        q_vec = model.encode_question(q_chars, q_words)
        q_vec_padded = model.encode_question(pad(q_chars, 7), pad(q_words, 7))
        start, end = model(q_chars, q_words, p_chars, p_words)
        start_p, end_p = model(pad(q_chars, 3), pad(q_words, 3), pad(p_chars, 20), pad(p_words, 20))
    torch.testing.assert_close(q_vec, q_vec_padded)
    torch.testing.assert_close(start, start_p[:, :6])
    torch.testing.assert_close(end, end_p[:, :6])
    assert torch.all(start_p[:, 6:] == 0) and torch.all(end_p[:, 6:] == 0)


def test_focal_loss_matches_numpy() -> None:
    p = np.array([0.9, 0.2, 0.6, 0.05, 0.5])
    y = np.array([1.0, 0.0, 1.0, 0.0, 0.0])
    m = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    gamma = 2.0
    per = -(y * (1 - p) ** gamma * np.log(p) + (1 - y) * p**gamma * np.log(1 - p))
    want = (per * m).sum() / m.sum()
    got = focal_loss(torch.log(torch.tensor(p)), torch.tensor(y), torch.tensor(m), gamma)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_encode_repeats_word_ids_per_char() -> None:
    chars = {"[PAD]": 0, "[UNK]": 1, "刘": 2, "备": 3}
    words = {"[PAD]": 0, "[UNK]": 1, "刘备": 2}
    assert encode(["刘备", "曰"], chars, words) == ([2, 3, 1], [2, 2, 1])


def test_vote_prefers_answer_found_in_several_passages() -> None:
    texts = ["甲乙丙丁", "丙丁戊", "己庚"]

    def peaks(n: int, i: int, j: int, s: float) -> tuple[np.ndarray, np.ndarray]:
        start, end = np.zeros(n), np.zeros(n)
        start[i], end[j] = s, s
        return start, end

    spans = [peaks(4, 2, 3, 0.8), peaks(3, 0, 1, 0.8), peaks(2, 0, 1, 0.85)]
    answer, score = vote(texts, [s for s, _ in spans], [e for _, e in spans], max_len=5)
    assert answer == "丙丁"
    assert score == pytest.approx((2 * 0.64**2) / (1 + 2 * 0.64))
