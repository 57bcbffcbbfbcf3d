"""Synthesizer attention (Tay et al., "Synthesizer: Rethinking Self-Attention in Transformers", 2020).

The attention weights are not query-key dot products but synthesized: the dense synthesizer predicts a row of
scores over key positions from each query token alone (`W2 relu(W1 x_i)`, one score per position up to
max_positions), the random synthesizer learns one fixed (position x position) score matrix per head, optionally as
a low-rank product. Either way a score depends on the key's absolute position, never on the key's content, so a
decoder caches values only; the "dense+dot" mixture adds the dot-product scores and caches keys as usual.

A key's position is read from the (batch, total) 0/1 key mask, as the runtime assigns positions
(`edgeinfer.lm.step.positions_from_mask`: the count of real slots before it), so left padding, holes in a
concatenated cache and right-padded buffers all give each real slot its own position. Plain torch ops only:
the exporter writes them as Gather, Where, Softmax and MatMul nodes. Needs torch (the [export] extra).
"""

from __future__ import annotations

import math

import torch


def key_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, total) absolute position of each cache slot: real slots before it (padding slots read 0)."""
    return (torch.cumsum(attention_mask, dim=1) - 1).clamp(min=0)


def query_positions(attention_mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """(batch, q_len) positions of the last q_len slots, the queries of this call."""
    total = attention_mask.shape[1]
    return key_positions(attention_mask).narrow(1, total - q_len, q_len)


def dense_scores(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Dense-synthesizer scores (batch, heads, q_len, total) from per-token logits over positions
    (batch, q_len, heads, max_positions), each key slot reading the logit of its position."""
    batch, q_len, heads, _ = logits.shape
    index = key_positions(attention_mask)[:, None, None, :].expand(batch, heads, q_len, -1)
    return torch.gather(logits.transpose(1, 2), 3, index)


def random_scores(left: torch.Tensor, right: torch.Tensor | None, attention_mask: torch.Tensor,
                  q_len: int) -> torch.Tensor:
    """Random-synthesizer scores (batch, heads, q_len, total): the learned matrix's (query position, key position)
    entries. `left` (heads, max_positions, max_positions) is the matrix itself, or with `right` (heads,
    max_positions, rank) the factors of left·rightᵀ (only the query rows are multiplied out)."""
    rows = left[:, query_positions(attention_mask, q_len)]  # (heads, batch, q_len, max_positions or rank)
    if right is not None:
        rows = torch.matmul(rows, right.transpose(1, 2)[:, None])
    rows = rows.transpose(0, 1)
    batch, heads = rows.shape[:2]
    index = key_positions(attention_mask)[:, None, None, :].expand(batch, heads, q_len, -1)
    return torch.gather(rows, 3, index)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(batch, seq, heads*head_dim) -> (batch, heads, seq, head_dim)."""
    batch, seq, hidden = x.shape
    return x.view(batch, seq, num_heads, hidden // num_heads).transpose(1, 2)


def dot_scores(q: torch.Tensor, keys: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Scaled dot-product scores (batch, heads, q_len, total) of q (batch, q_len, hidden) against cached keys."""
    return torch.matmul(split_heads(q, num_heads), keys.transpose(2, 3)) / math.sqrt(keys.shape[-1])


def synthesized_attention(scores: torch.Tensor, v: torch.Tensor, past_v: torch.Tensor,
                          attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention with given scores (batch, heads, q_len, total) over [past_v, new v].

    v: (batch, q_len, heads*head_dim); past_v: (batch, heads, past, head_dim); attention_mask: (batch, total) 0/1.
    Returns the output (batch, q_len, heads*head_dim) and the present values (batch, heads, total, head_dim).
    """
    batch, q_len, hidden = v.shape
    heads = scores.shape[1]
    values = torch.cat([past_v, split_heads(v, heads)], dim=2)
    total = values.shape[2]
    key_slot = torch.arange(total, device=v.device)
    query_slot = key_slot.narrow(0, total - q_len, q_len)
    visible = (key_slot[None, :] <= query_slot[:, None])[None, None] & (attention_mask[:, None, None, :] != 0)
    weights = torch.softmax(scores.masked_fill(~visible, torch.finfo(scores.dtype).min), dim=-1)
    out = torch.matmul(weights.to(values.dtype), values)
    return out.transpose(1, 2).reshape(batch, q_len, hidden), values
