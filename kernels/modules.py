"""Torch side of the fused ops: modules the training models use, each exporting to a single ONNX node.

In eager mode (training, parity checks) everything is plain differentiable torch. While torch.export traces
a model (`torch.compiler.is_exporting()`), the same calls go through custom ops in the `edgeinfer`
namespace, which `kernels.onnx_emit` translates into one ONNX node each. Needs torch (the [export] extra).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .gelu import SIGMOID_ALPHA, check_form


# ---------------------------------------------------------------- GELU
@torch.library.custom_op("edgeinfer::quick_gelu", mutates_args=())
def quick_gelu_op(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return x * torch.sigmoid(alpha * x)


@quick_gelu_op.register_fake
def _quick_gelu_fake(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.empty_like(x)


class Gelu(torch.nn.Module):
    """GELU in one of the forms of `kernels.gelu`; exact and tanh export as ONNX `Gelu` natively."""

    def __init__(self, form: str = "exact") -> None:
        super().__init__()
        self.form = check_form(form)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "sigmoid":
            if torch.compiler.is_exporting():
                return quick_gelu_op(x, SIGMOID_ALPHA)
            return x * torch.sigmoid(SIGMOID_ALPHA * x)
        return F.gelu(x, approximate="none" if self.form == "exact" else "tanh")

    def extra_repr(self) -> str:
        return f"form={self.form!r}"


# ---------------------------------------------------------------- attention
def _attention_eager(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    attention_mask: torch.Tensor,
    num_heads: int,
    kv_num_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, q_len, hidden = q.shape
    head_dim = hidden // num_heads
    gqa = kv_num_heads != num_heads

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, q_len, -1, head_dim).transpose(1, 2)

    if attention_mask.dim() == 2 and past_k.shape[2] == 0 and not torch.compiler.is_exporting() and bool(
        attention_mask.all()
    ):
        # training and full prompts: nothing masked but the future, so the fused causal kernel applies
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), is_causal=True, enable_gqa=gqa)
        return out.transpose(1, 2).reshape(batch, q_len, hidden), heads(k), heads(v)
    keys = torch.cat([past_k, heads(k)], dim=2)
    values = torch.cat([past_v, heads(v)], dim=2)
    total = keys.shape[2]
    key_pos = torch.arange(total, device=q.device)
    query_pos = torch.arange(q_len, device=q.device) + (total - q_len)
    if attention_mask.dim() == 3:  # (batch, seq, total): the caller says what each query sees (tree scoring)
        visible = attention_mask[:, None] != 0
    else:
        visible = (key_pos[None, :] <= query_pos[:, None])[None, None] & (attention_mask[:, None, None, :] != 0)
    bias = torch.zeros(visible.shape, dtype=q.dtype, device=q.device)
    bias = bias.masked_fill(~visible, torch.finfo(q.dtype).min)
    out = F.scaled_dot_product_attention(heads(q), keys, values, attn_mask=bias, enable_gqa=gqa)
    return out.transpose(1, 2).reshape(batch, q_len, hidden), keys, values


@torch.library.custom_op("edgeinfer::attention", mutates_args=())
def attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    attention_mask: torch.Tensor,
    num_heads: int,
    kv_num_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(t.clone() for t in _attention_eager(q, k, v, past_k, past_v, attention_mask, num_heads, kv_num_heads))


@attention_op.register_fake
def _attention_fake(q, k, v, past_k, past_v, attention_mask, num_heads, kv_num_heads):
    _, heads, past, head_dim = past_k.shape
    cache_shape = (q.shape[0], heads, past + q.shape[1], head_dim)
    return torch.empty_like(q), past_k.new_empty(cache_shape), past_v.new_empty(cache_shape)


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    attention_mask: torch.Tensor,
    num_heads: int,
    kv_num_heads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal attention over [past, new] keys with a (batch, past+new) 0/1 key mask, or with a
    (batch, seq, past+new) query-key mask that says exactly which keys each query sees (no causal rule added).

    q: (batch, seq, heads*head_dim); k, v: (batch, seq, kv_heads*head_dim); past_k/v: (batch, kv_heads, past,
    head_dim). Grouped-query attention when kv_num_heads (default num_heads) is smaller: each key/value head
    serves num_heads / kv_num_heads query heads. Returns the attention output and the present caches
    (batch, kv_heads, past+seq, head_dim). Same function as `kernels.attention.attention_reference`.
    """
    kv_num_heads = num_heads if kv_num_heads is None else kv_num_heads
    if torch.compiler.is_exporting():
        return attention_op(q, k, v, past_k, past_v, attention_mask, num_heads, kv_num_heads)
    return _attention_eager(q, k, v, past_k, past_v, attention_mask, num_heads, kv_num_heads)


# ---------------------------------------------------------------- rotary (Llama-family) attention
def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rotary embedding of x (batch, seq, heads*head_dim) by half tables cos, sin (batch, seq, head_dim/2), in the
    rotate-half layout of Llama checkpoints (each head's two halves form the rotated pairs)."""
    batch, seq, _ = x.shape
    x1, x2 = x.view(batch, seq, num_heads, -1).chunk(2, dim=-1)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).view(batch, seq, -1)


def _rotary_attention_eager(qkv, past_k, past_v, attention_mask, position_ids, cos_cache, sin_cache, num_heads: int,
                            kv_num_heads: int):
    head_dim = past_k.shape[-1]
    q, k, v = qkv.split([num_heads * head_dim, kv_num_heads * head_dim, kv_num_heads * head_dim], dim=-1)
    cos, sin = cos_cache[position_ids], sin_cache[position_ids]
    return _attention_eager(rotate(q, cos, sin, num_heads), rotate(k, cos, sin, kv_num_heads), v, past_k, past_v,
                            attention_mask, num_heads, kv_num_heads)


@torch.library.custom_op("edgeinfer::rotary_attention", mutates_args=())
def rotary_attention_op(
    qkv: torch.Tensor,
    past_k: torch.Tensor,
    past_v: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    num_heads: int,
    kv_num_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return tuple(t.clone() for t in _rotary_attention_eager(qkv, past_k, past_v, attention_mask, position_ids, cos_cache,
                                                            sin_cache, num_heads, kv_num_heads))


@rotary_attention_op.register_fake
def _rotary_attention_fake(qkv, past_k, past_v, attention_mask, position_ids, cos_cache, sin_cache, num_heads,
                           kv_num_heads):
    batch, seq, _ = qkv.shape
    _, heads, past, head_dim = past_k.shape
    cache_shape = (batch, heads, past + seq, head_dim)
    return qkv.new_empty((batch, seq, num_heads * head_dim)), past_k.new_empty(cache_shape), past_v.new_empty(cache_shape)


def rotary_attention(qkv: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, attention_mask: torch.Tensor,
                     position_ids: torch.Tensor, cos_cache: torch.Tensor, sin_cache: torch.Tensor, num_heads: int,
                     kv_num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`causal_attention` of the packed projection qkv (batch, seq, (heads + 2*kv_heads)*head_dim) after rotating
    q and k to their positions: cos_cache, sin_cache (max_positions, head_dim/2) are read at position_ids.

    One op so that the contrib target can hand the whole of it to `GroupQueryAttention` (packed QKV, built-in
    rotary); the standard target writes opset-23 `RotaryEmbedding` nodes before its `Attention`.
    """
    attend = rotary_attention_op if torch.compiler.is_exporting() else _rotary_attention_eager
    return attend(qkv, past_k, past_v, attention_mask, position_ids, cos_cache, sin_cache, num_heads, kv_num_heads)


# ---------------------------------------------------------------- bidirectional (encoder) attention
def _encoder_attention_eager(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor, num_heads: int
) -> torch.Tensor:
    batch, seq, hidden = q.shape
    head_dim = hidden // num_heads

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(batch, seq, num_heads, head_dim).transpose(1, 2)

    hidden_keys = attention_mask[:, None, None, :] == 0
    bias = torch.zeros(hidden_keys.shape, dtype=q.dtype, device=q.device).masked_fill(hidden_keys, torch.finfo(q.dtype).min)
    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=bias)
    return out.transpose(1, 2).reshape(batch, seq, hidden)


@torch.library.custom_op("edgeinfer::encoder_attention", mutates_args=())
def encoder_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor, num_heads: int
) -> torch.Tensor:
    return _encoder_attention_eager(q, k, v, attention_mask, num_heads).clone()


@encoder_attention_op.register_fake
def _encoder_attention_fake(q, k, v, attention_mask, num_heads):
    return torch.empty_like(q)


def bidirectional_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention_mask: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """Encoder self-attention: every query sees every key its row's (batch, seq) 0/1 mask keeps.

    q, k, v: (batch, seq, heads*head_dim) -> (batch, seq, heads*head_dim). Exports as one ONNX node.
    """
    if torch.compiler.is_exporting():
        return encoder_attention_op(q, k, v, attention_mask, num_heads)
    return _encoder_attention_eager(q, k, v, attention_mask, num_heads)
