"""DGCNN extractive reader (after Su Jianlin's WebQA/SogouQA model), torch side.

Characters are the unit; a jieba word embedding is added on each character so
word boundaries help without a word-level output space.  Question and passage
go through gated dilated convolutions; the pooled question vector and two
co-occurrence features are concatenated onto every passage position.  Start and
end pointers are per-position sigmoids scaled by a passage-level has-answer
probability, so passages without the answer can say so.

Word ids are given per character (the word's id repeated over its characters),
which keeps the ONNX graph free of segmentation: runtime needs only jieba and
two dictionary look-ups (:func:`encode`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# featurisation and decoding are numpy-only and shared with the runtime; re-exported for training
from edgeinfer.qa.dgcnn import PAD, UNK, encode
from edgeinfer.qa.spans import best_span, vote

__all__ = [
    "PAD", "UNK", "AttentionPool", "DGCNNConfig", "DGCNNReader", "GatedConvBlock",
    "best_span", "encode", "focal_loss", "reader_loss", "vote",
]

NEG = -1e4  # additive mask value; finite so fp16 and ONNX stay NaN-free


@dataclass
class DGCNNConfig:
    """Sizes of the reader; saved next to the weights as JSON."""

    char_vocab: int
    word_vocab: int
    dim: int = 128
    word_dim: int = 64
    q_dilations: list[int] = field(default_factory=lambda: [1, 2, 1])
    p_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 1])
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


class GatedConvBlock(nn.Module):
    """Residual gated dilated conv: out = x·(1−g) + conv·g with g = sigmoid(gate).

    The gate lets each position choose between keeping its input and taking the
    convolution, which keeps deep dilated stacks trainable without norms.
    """

    def __init__(self, dim: int, dilation: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, 2 * dim, kernel_size=3, padding=dilation, dilation=dilation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (batch, len, dim); mask: (batch, len, 1) float, 0 at padding."""
        x = x * mask
        conv, gate = self.conv(x.transpose(1, 2)).transpose(1, 2).chunk(2, dim=-1)
        g = torch.sigmoid(self.dropout(gate))
        return (x * (1 - g) + conv * g) * mask


class AttentionPool(nn.Module):
    """Additive attention pooling: softmax over v·tanh(W h), padding excluded."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1, bias=False)

    def forward(self, h: Tensor, mask: Tensor) -> Tensor:
        """h: (batch, len, dim); mask: (batch, len, 1) -> (batch, dim)."""
        logits = self.score(torch.tanh(self.proj(h)))
        logits = torch.where(mask > 0, logits, torch.full_like(logits, NEG))
        weights = torch.softmax(logits, dim=1) * mask
        return (weights * h).sum(dim=1)


class DGCNNReader(nn.Module):
    """Question/passage pair -> start and end pointer probabilities over the passage."""

    def __init__(self, config: DGCNNConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.char_emb = nn.Embedding(config.char_vocab, d, padding_idx=PAD)
        self.word_emb = nn.Embedding(config.word_vocab, config.word_dim, padding_idx=PAD)
        self.word_proj = nn.Linear(config.word_dim, d, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        self.q_blocks = nn.ModuleList(GatedConvBlock(d, r, config.dropout) for r in config.q_dilations)
        self.q_pool = AttentionPool(d)
        self.p_input = nn.Linear(2 * d + 2, d)
        self.p_blocks = nn.ModuleList(GatedConvBlock(d, r, config.dropout) for r in config.p_dilations)
        self.p_pool = AttentionPool(d)
        self.pointers = nn.Linear(d, 2)
        self.has_answer = nn.Linear(d, 1)

    def embed(self, chars: Tensor, words: Tensor) -> Tensor:
        """Char embedding plus the projected embedding of the word each char belongs to."""
        return self.dropout(self.char_emb(chars) + self.word_proj(self.word_emb(words)))

    def encode_question(self, q_chars: Tensor, q_words: Tensor) -> Tensor:
        """Pooled question vector (batch, dim)."""
        mask = (q_chars != PAD).unsqueeze(-1).float()
        h = self.embed(q_chars, q_words)
        for block in self.q_blocks:
            h = block(h, mask)
        return self.q_pool(h, mask)

    def logits(self, q_chars: Tensor, q_words: Tensor, p_chars: Tensor, p_words: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Start logits, end logits (batch, p_len) and the has-answer logit (batch,)."""
        q_vec = self.encode_question(q_chars, q_words)
        mask = (p_chars != PAD).unsqueeze(-1).float()
        features = torch.stack([_in_question(p_chars, q_chars), _in_question(p_words, q_words)], dim=-1)
        h = torch.cat([self.embed(p_chars, p_words), q_vec.unsqueeze(1).expand(-1, p_chars.shape[1], -1), features], dim=-1)
        h = self.p_input(h) * mask
        for block in self.p_blocks:
            h = block(h, mask)
        start, end = self.pointers(h).unbind(dim=-1)
        return start, end, self.has_answer(self.p_pool(h, mask)).squeeze(-1)

    def forward(self, q_chars: Tensor, q_words: Tensor, p_chars: Tensor, p_words: Tensor) -> tuple[Tensor, Tensor]:
        """(start_probs, end_probs), each (batch, p_len), zero at padding."""
        start, end, answer = self.logits(q_chars, q_words, p_chars, p_words)
        scale = torch.sigmoid(answer).unsqueeze(-1) * (p_chars != PAD).float()
        return torch.sigmoid(start) * scale, torch.sigmoid(end) * scale


def _in_question(p_ids: Tensor, q_ids: Tensor) -> Tensor:
    """1.0 where a passage id (not PAD/UNK) also occurs in the question: the seed's co-occurrence feature."""
    same = (p_ids.unsqueeze(2) == q_ids.unsqueeze(1)) & (q_ids > UNK).unsqueeze(1)
    return same.any(dim=2).float()


def focal_loss(log_p: Tensor, target: Tensor, mask: Tensor, gamma: float = 2.0) -> Tensor:
    """Binary focal loss from log-probabilities, averaged over mask.

    -[y (1-p)^γ log p + (1-y) p^γ log(1-p)]: down-weights the many easy negative
    positions so the few answer boundaries dominate the gradient.
    """
    log_p = log_p.clamp(max=-1e-7)
    p = log_p.exp()
    log_q = torch.log(-torch.expm1(log_p))
    loss = -(target * (1 - p) ** gamma * log_p + (1 - target) * p**gamma * log_q)
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def reader_loss(model: DGCNNReader, batch: dict[str, Tensor]) -> Tensor:
    """Focal loss on both pointers (scaled by has-answer) plus focal loss on has-answer itself."""
    start, end, answer = (t.float() for t in model.logits(batch["q_chars"], batch["q_words"], batch["p_chars"], batch["p_words"]))
    mask = (batch["p_chars"] != PAD).float()
    log_a = F.logsigmoid(answer)
    loss_start = focal_loss(F.logsigmoid(start) + log_a.unsqueeze(-1), batch["starts"], mask)
    loss_end = focal_loss(F.logsigmoid(end) + log_a.unsqueeze(-1), batch["ends"], mask)
    has = (batch["starts"].sum(dim=1) > 0).float()
    loss_has = focal_loss(log_a, has, torch.ones_like(has))
    return loss_start + loss_end + loss_has
