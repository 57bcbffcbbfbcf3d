"""Scaled dot-product attention with causal mask, key-padding mask and KV cache: the numpy reference.

Every attention emission (opset-23 `Attention`, contrib `GroupQueryAttention`) is tested against
`attention_reference`, and the rotary ones against `rotary_reference` first. Layouts follow the ONNX ops:
queries/keys/values are (batch, seq, heads*head_dim), caches are (batch, kv_heads, length, head_dim); with fewer
key/value heads than query heads (grouped-query attention) each serves heads / kv_heads consecutive query heads.

Masking rule: query i of a row sits at absolute position past_len + i and may see key j when j <= past_len + i
and key_mask[j] is 1. A query that can see no key at all (a fully padded row) gets an output of zeros, never
NaN; graphs compute the same thing by adding a large finite negative bias instead of -inf, so their output
for such a query is finite but otherwise meaningless and callers must ignore it.
"""

from __future__ import annotations

import numpy as np

MASK_VALUE = float(np.finfo(np.float32).min)


def split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """(B, S, H*D) -> (B, H, S, D)."""
    b, s, hidden = x.shape
    return x.reshape(b, s, num_heads, hidden // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(B, H, S, D) -> (B, S, H*D)."""
    b, h, s, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, h * d)


def visible_keys(key_mask: np.ndarray, query_len: int) -> np.ndarray:
    """Boolean (B, 1, S, T): which keys each query may attend to (causal and key padding together)."""
    total = key_mask.shape[1]
    past = total - query_len
    causal = np.arange(total)[None, :] <= (past + np.arange(query_len))[:, None]
    return causal[None, None] & (key_mask[:, None, None, :] != 0)


def attention_reference(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    num_heads: int,
    past_k: np.ndarray | None = None,
    past_v: np.ndarray | None = None,
    key_mask: np.ndarray | None = None,
    scale: float | None = None,
    kv_num_heads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Causal multi-head (or grouped-query, with kv_num_heads) attention over [past, new] keys.

    Returns (output (B, S, H*D), present_k, present_v (B, KV, P+S, D)). `key_mask` is (B, P+S) of 0/1,
    all ones when omitted.
    """
    kv_num_heads = num_heads if kv_num_heads is None else kv_num_heads
    qh = split_heads(q, num_heads).astype(np.float64)
    kh, vh = (split_heads(t, kv_num_heads).astype(np.float64) for t in (k, v))
    if past_k is not None:
        kh = np.concatenate([past_k.astype(np.float64), kh], axis=2)
        vh = np.concatenate([past_v.astype(np.float64), vh], axis=2)
    present_k, present_v = kh, vh
    kh, vh = (np.repeat(t, num_heads // kv_num_heads, axis=1) for t in (kh, vh))
    b, _, s, d = qh.shape
    total = kh.shape[2]
    if key_mask is None:
        key_mask = np.ones((b, total), dtype=np.int64)
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    scores = np.einsum("bhsd,bhtd->bhst", qh, kh) * scale
    visible = visible_keys(key_mask, s)
    scores = np.where(visible, scores, -np.inf)
    row_max = np.max(scores, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    weights = np.where(visible, np.exp(scores - row_max), 0.0)
    denom = weights.sum(axis=-1, keepdims=True)
    weights = weights / np.where(denom > 0, denom, 1.0)
    out = np.einsum("bhst,bhtd->bhsd", weights, vh)
    dtype = q.dtype
    return merge_heads(out).astype(dtype), present_k.astype(dtype), present_v.astype(dtype)


def rotary_reference(x: np.ndarray, cos_cache: np.ndarray, sin_cache: np.ndarray, positions: np.ndarray,
                     num_heads: int) -> np.ndarray:
    """Rotary embedding of x (B, S, H*D) at positions (B, S), rotate-half layout: within each head, element i of
    the first half and element i of the second half turn together by angle position·inv_freq[i]; the tables are
    (max_positions, D/2) of cos and sin of those angles."""
    xh = split_heads(x, num_heads).astype(np.float64)
    x1, x2 = np.split(xh, 2, axis=-1)
    cos, sin = cos_cache[positions][:, None], sin_cache[positions][:, None]  # (B, 1, S, D/2)
    return merge_heads(np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)).astype(x.dtype)
