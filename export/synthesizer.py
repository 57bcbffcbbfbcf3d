"""Synthesizer self-attention layers for the GPT (`GPTConfig.attention_kind`), the math in `kernels.synthesizer`.

- "dense": scores over key positions from each token alone, `W2 relu(W1 x_i)` with one output per head and
  position; no queries or keys, so the cache holds values only.
- "random": a learned (position x position) score matrix per head, input-independent; `GPTConfig.synth_rank` > 0
  factorizes it as R1·R2ᵀ of that rank. Values only in the cache, too.
- "dense+dot": the dense scores added to the usual scaled dot-product scores (the paper's mixture, its weight
  learned inside W2); keys and values cached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from edgeinfer.kernels.synthesizer import (
    dense_scores,
    dot_scores,
    random_scores,
    split_heads,
    synthesized_attention,
)

if TYPE_CHECKING:
    from .gpt import GPTConfig

ATTENTION_KINDS = ("dot", "dense", "random", "dense+dot")
VALUE_ONLY_KINDS = ("dense", "random")  # kinds whose scores need no keys: the cache holds values only


def check_attention_kind(kind: str) -> str:
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")
    return kind


class SynthesizerAttention(nn.Module):
    """Causal self-attention with synthesized scores; same call as `gpt.SelfAttention`: (x, past, mask) ->
    (output, presents), past and presents being the cached tensors `GPTConfig.cache_parts` names."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.kind = check_attention_kind(cfg.attention_kind)
        self.n_head, self.n_positions = cfg.n_head, cfg.n_positions
        d = cfg.n_embd
        if self.kind == "dense+dot":
            self.qkv = nn.Linear(d, 3 * d)
        else:
            self.value = nn.Linear(d, d)
        if self.kind in ("dense", "dense+dot"):
            self.synth_hidden = nn.Linear(d, d)
            self.synth_out = nn.Linear(d, cfg.n_head * cfg.n_positions)
        if self.kind == "random":
            width = cfg.synth_rank or cfg.n_positions
            self.random_left = nn.Parameter(torch.randn(cfg.n_head, cfg.n_positions, width) * 0.02)
            self.random_right = (nn.Parameter(torch.randn(cfg.n_head, cfg.n_positions, width) * 0.02)
                                 if cfg.synth_rank else None)
        self.proj = nn.Linear(d, d)
        self.dropout = nn.Dropout(cfg.dropout)

    def _dense(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = self.synth_out(torch.relu(self.synth_hidden(x)))
        return dense_scores(logits.view(*x.shape[:2], self.n_head, self.n_positions), attention_mask)

    def forward(self, x: torch.Tensor, past: list[torch.Tensor],
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.kind == "dense+dot":
            q, k, v = self.qkv(x).split(x.shape[-1], dim=-1)
            keys = torch.cat([past[0], split_heads(k, self.n_head)], dim=2)
            scores = dot_scores(q, keys, self.n_head) + self._dense(x, attention_mask)
            y, values = synthesized_attention(scores, v, past[1], attention_mask)
            return self.dropout(self.proj(y)), [keys, values]
        if self.kind == "dense":
            scores = self._dense(x, attention_mask)
        else:
            scores = random_scores(self.random_left, self.random_right, attention_mask, x.shape[1])
        y, values = synthesized_attention(scores, self.value(x), past[0], attention_mask)
        return self.dropout(self.proj(y)), [values]
