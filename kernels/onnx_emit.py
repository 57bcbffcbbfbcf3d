"""ONNX emission of the fused ops: onnxscript translations handed to the torch dynamo exporter.

Two attention targets, picked at export:
- "standard": ONNX opset-23 `Attention`, fed an additive mask built from the key mask (causal + padding).
  Past and present caches are separate tensors (present = past + new); runs on any onnxruntime provider.
- "contrib": onnxruntime's `com.microsoft.GroupQueryAttention`. It reads the per-row length from the key
  mask (seqlens_k) and writes new keys in place when past and present are bound to one max-length buffer,
  so decoding needs no per-step cache copy. Rows must be right-padded.
- "unfused": no fused op at all, as a plain exporter writes it: attention as MatMul, Softmax, MatMul over concatenated
  caches, GELU as its Erf / Tanh / Sigmoid formula. It exists to measure what fusion buys (benchmarks/).
The Llama family's `edgeinfer::rotary_attention` (packed q/k/v, rotary, then attention) has a translation per target
too: contrib hands the rotary to `GroupQueryAttention` itself (do_rotary), standard writes opset-23 `RotaryEmbedding`
nodes before its `Attention`, unfused writes the rotation's formula.
The mask sub-expressions are identical in every layer; onnxruntime's common-subexpression pass merges them.
"""

from __future__ import annotations

import math

from onnx.defs import OpSchema
from onnxscript import opset23 as op
from onnxscript.values import Op, Opset

from .attention import MASK_VALUE
from .gelu import SIGMOID_ALPHA

ATTENTION_TARGETS = ("standard", "contrib", "unfused")
MASK_KINDS = ("key", "query_key")
_msft = Opset("com.microsoft", 1)


def _contrib_op(name: str, inputs: list[str], outputs: list[str], attributes: dict[str, OpSchema.AttrType]) -> Op:
    """An onnxscript op for an onnxruntime contrib op; onnx ships no schemas for these, so we declare them.

    Inputs named `seqlens*`, `total_*` or `*_mask` are int32, `position_ids` int64, all others float; `bias`, `key`
    and `value` are optional (a packed query holds all three projections).
    """

    def param(n: str) -> OpSchema.FormalParameter:
        kind = "M" if n.startswith(("seqlens", "total")) or n.endswith("_mask") else "I" if n == "position_ids" else "T"
        optional = n in ("bias", "key", "value")
        option = OpSchema.FormalParameterOption.Optional if optional else OpSchema.FormalParameterOption.Single
        return OpSchema.FormalParameter(n, kind, param_option=option)

    schema = OpSchema(
        name,
        "com.microsoft",
        1,
        inputs=[param(n) for n in inputs],
        outputs=[param(n) for n in outputs],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], ""),
                          ("I", ["tensor(int64)"], "")],
        attributes=[OpSchema.Attribute(n, t, "") for n, t in attributes.items()],
    )
    return Op(_msft, name, schema)


QuickGelu = _contrib_op("QuickGelu", ["X"], ["Y"], {"alpha": OpSchema.AttrType.FLOAT})
GroupQueryAttention = _contrib_op(
    "GroupQueryAttention",
    ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length"],
    ["output", "present_key", "present_value"],
    {"num_heads": OpSchema.AttrType.INT, "kv_num_heads": OpSchema.AttrType.INT},
)
# the same op with its built-in rotary embedding: packed QKV in, cos/sin tables read at explicit positions
RotaryGroupQueryAttention = _contrib_op(
    "GroupQueryAttention",
    ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "cos_cache", "sin_cache",
     "position_ids"],
    ["output", "present_key", "present_value"],
    {"num_heads": OpSchema.AttrType.INT, "kv_num_heads": OpSchema.AttrType.INT, "do_rotary": OpSchema.AttrType.INT},
)


MultiHeadAttention = _contrib_op(
    "MultiHeadAttention", ["query", "key", "value", "bias", "key_padding_mask"], ["output"],
    {"num_heads": OpSchema.AttrType.INT},
)


def quick_gelu(x, alpha: float = SIGMOID_ALPHA):
    return QuickGelu(x, alpha=alpha)


def _causal_bias(q, attention_mask):
    """(batch, 1, q_len, total) additive mask: 0 where a query may look (causal and not padding), MASK_VALUE else."""
    total = op.Squeeze(op.Shape(attention_mask, start=1, end=2))
    q_len = op.Squeeze(op.Shape(q, start=1, end=2))
    zero = op.Constant(value_int=0)
    one = op.Constant(value_int=1)
    key_pos = op.Range(zero, total, one)
    query_pos = op.Add(op.Range(zero, q_len, one), op.Sub(total, q_len))
    causal = op.LessOrEqual(op.Unsqueeze(key_pos, [0]), op.Unsqueeze(query_pos, [1]))
    key_ok = op.Unsqueeze(op.Cast(attention_mask, to=9), [1, 2])  # 9 = BOOL
    visible = op.And(op.Unsqueeze(causal, [0, 1]), key_ok)
    return op.Where(visible, op.Constant(value_float=0.0), op.Constant(value_float=MASK_VALUE))


def attention_standard(q, k, v, past_k, past_v, attention_mask, num_heads: int, kv_num_heads: int):
    bias = _causal_bias(q, attention_mask)
    y, present_k, present_v, _ = op.Attention(
        q, k, v, bias, past_k, past_v, q_num_heads=num_heads, kv_num_heads=kv_num_heads
    )
    return y, present_k, present_v


def attention_query_key(q, k, v, past_k, past_v, attention_mask, num_heads: int, kv_num_heads: int):
    """The standard target with a (batch, seq, total) 0/1 mask given whole: any query-key pattern (a tree)."""
    visible = op.Unsqueeze(op.Cast(attention_mask, to=9), [1])  # (batch, 1, seq, total), 9 = BOOL
    bias = op.Where(visible, op.Constant(value_float=0.0), op.Constant(value_float=MASK_VALUE))
    y, present_k, present_v, _ = op.Attention(
        q, k, v, bias, past_k, past_v, q_num_heads=num_heads, kv_num_heads=kv_num_heads
    )
    return y, present_k, present_v


def attention_unfused(q, k, v, past_k, past_v, attention_mask, num_heads: int, kv_num_heads: int):
    """softmax(q·kᵀ/√d + mask)·v in primitive ops; caches concatenate like the standard target's. Grouped-query
    caches are repeated to one key/value head per query head before the products."""

    def heads(x, n: int):  # (batch, seq, n·dim) -> (batch, n, seq, dim)
        return op.Transpose(op.Reshape(x, op.Constant(value_ints=[0, 0, n, -1])), perm=[0, 2, 1, 3])

    def repeated(cache):  # (batch, kv_heads, total, dim) -> (batch, heads, total, dim)
        if kv_num_heads == num_heads:
            return cache
        groups = op.Expand(op.Unsqueeze(cache, [2]), op.Constant(value_ints=[1, 1, num_heads // kv_num_heads, 1, 1]))
        shape = op.Concat(op.Shape(cache, start=0, end=1), op.Constant(value_ints=[num_heads]),
                          op.Shape(cache, start=2), axis=0)
        return op.Reshape(groups, shape)

    present_k = op.Concat(past_k, heads(k, kv_num_heads), axis=2)
    present_v = op.Concat(past_v, heads(v, kv_num_heads), axis=2)
    head_dim = op.Cast(op.Shape(present_k, start=3, end=4), to=1)  # 1 = FLOAT
    keys_t = op.Transpose(repeated(present_k), perm=[0, 1, 3, 2])
    scores = op.Div(op.MatMul(heads(q, num_heads), keys_t), op.Sqrt(head_dim))
    weights = op.Softmax(op.Add(scores, _causal_bias(q, attention_mask)), axis=-1)
    y = op.Transpose(op.MatMul(weights, repeated(present_v)), perm=[0, 2, 1, 3])
    return op.Reshape(y, op.Constant(value_ints=[0, 0, -1])), present_k, present_v


def gelu_unfused(x, approximate: str = "none"):
    """GELU as its formula: exact 0.5·x·(1 + erf(x/√2)); tanh 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))."""
    half = op.Mul(op.Constant(value_float=0.5), x)
    if approximate == "tanh":
        cube = op.Mul(op.Constant(value_float=0.044715), op.Mul(x, op.Mul(x, x)))
        inner = op.Tanh(op.Mul(op.Constant(value_float=math.sqrt(2 / math.pi)), op.Add(x, cube)))
    else:
        inner = op.Erf(op.Mul(x, op.Constant(value_float=1 / math.sqrt(2))))
    return op.Mul(half, op.Add(op.Constant(value_float=1.0), inner))


def quick_gelu_unfused(x, alpha: float = SIGMOID_ALPHA):
    return op.Mul(x, op.Sigmoid(op.Mul(op.Constant(value_float=alpha), x)))


def attention_contrib(q, k, v, past_k, past_v, attention_mask, num_heads: int, kv_num_heads: int):
    seqlens_k, total = _seqlens(attention_mask)
    return GroupQueryAttention(
        q, k, v, past_k, past_v, seqlens_k, total, num_heads=num_heads, kv_num_heads=kv_num_heads
    )


def _seqlens(attention_mask):
    """GroupQueryAttention's per-row lengths minus one and the total length, both int32 (6 = INT32)."""
    seqlens_k = op.Cast(op.Sub(op.ReduceSum(attention_mask, [1], keepdims=0), op.Constant(value_int=1)), to=6)
    return seqlens_k, op.Cast(op.Squeeze(op.Shape(attention_mask, start=1, end=2)), to=6)


def _split_qkv(qkv, cos_cache, num_heads: int, kv_num_heads: int):
    """q, k, v of a packed projection (batch, seq, (heads + 2*kv_heads)*head_dim); the head size is twice the rotary
    table's width."""
    head_dim = op.Mul(op.Shape(cos_cache, start=1, end=2), op.Constant(value_ints=[2]))
    q_end = op.Mul(head_dim, op.Constant(value_ints=[num_heads]))
    k_end = op.Add(q_end, op.Mul(head_dim, op.Constant(value_ints=[kv_num_heads])))
    axis, start, end = op.Constant(value_ints=[-1]), op.Constant(value_ints=[0]), op.Shape(qkv, start=-1)
    return op.Slice(qkv, start, q_end, axis), op.Slice(qkv, q_end, k_end, axis), op.Slice(qkv, k_end, end, axis)


def _rotated_split(qkv, position_ids, cos_cache, sin_cache, num_heads: int, kv_num_heads: int):
    """q, k, v of a packed projection, q and k rotated by opset-23 `RotaryEmbedding` (rotate-half layout)."""
    q, k, v = _split_qkv(qkv, cos_cache, num_heads, kv_num_heads)
    q = op.RotaryEmbedding(q, cos_cache, sin_cache, position_ids, num_heads=num_heads)
    k = op.RotaryEmbedding(k, cos_cache, sin_cache, position_ids, num_heads=kv_num_heads)
    return q, k, v


def rotary_attention_standard(qkv, past_k, past_v, attention_mask, position_ids, cos_cache, sin_cache, num_heads: int,
                              kv_num_heads: int):
    q, k, v = _rotated_split(qkv, position_ids, cos_cache, sin_cache, num_heads, kv_num_heads)
    return attention_standard(q, k, v, past_k, past_v, attention_mask, num_heads, kv_num_heads)


def rotary_attention_query_key(qkv, past_k, past_v, attention_mask, position_ids, cos_cache, sin_cache,
                               num_heads: int, kv_num_heads: int):
    q, k, v = _rotated_split(qkv, position_ids, cos_cache, sin_cache, num_heads, kv_num_heads)
    return attention_query_key(q, k, v, past_k, past_v, attention_mask, num_heads, kv_num_heads)


def rotary_attention_contrib(qkv, past_k, past_v, attention_mask, position_ids, cos_cache, sin_cache, num_heads: int,
                             kv_num_heads: int):
    """One `GroupQueryAttention` node: packed QKV, rotary built in, read at the graph's position_ids.

    onnxruntime 1.32's CPU kernel rotates a first prompt (nothing cached yet) at positions 0..seq-1 whatever
    position_ids says; in the shared-buffer layout this target exists for, a row's positions are its cache slots, so
    the two agree (tests/test_attention.py feeds other positions to cached steps only).
    """
    seqlens_k, total = _seqlens(attention_mask)
    return RotaryGroupQueryAttention(qkv, None, None, past_k, past_v, seqlens_k, total, cos_cache, sin_cache,
                                     position_ids, num_heads=num_heads, kv_num_heads=kv_num_heads, do_rotary=1)


def rotary_attention_unfused(qkv, past_k, past_v, attention_mask, position_ids, cos_cache, sin_cache, num_heads: int,
                             kv_num_heads: int):
    """Rotary embedding as its formula (x1·cos − x2·sin, x2·cos + x1·sin per head), then `attention_unfused`."""
    q, k, v = _split_qkv(qkv, cos_cache, num_heads, kv_num_heads)
    cos = op.Unsqueeze(op.Gather(cos_cache, position_ids), [2])  # (batch, seq, 1, head_dim/2)
    sin = op.Unsqueeze(op.Gather(sin_cache, position_ids), [2])

    def rotate(x, heads: int):
        x = op.Reshape(x, op.Constant(value_ints=[0, 0, heads, -1]))
        x1, x2 = op.Split(x, axis=-1, num_outputs=2)
        rotated = op.Concat(op.Sub(op.Mul(x1, cos), op.Mul(x2, sin)), op.Add(op.Mul(x2, cos), op.Mul(x1, sin)), axis=-1)
        return op.Reshape(rotated, op.Constant(value_ints=[0, 0, -1]))

    return attention_unfused(rotate(q, num_heads), rotate(k, kv_num_heads), v, past_k, past_v, attention_mask,
                             num_heads, kv_num_heads)


def translation_table(attention_target: str, mask: str = "key") -> dict:
    """Custom-op translations for `torch.onnx.export(..., custom_translation_table=...)`.

    mask "key": the graph takes a (batch, total) key mask and adds the causal rule; "query_key" (standard target
    only): a (batch, seq, total) mask given whole.
    """
    import torch

    from . import modules  # noqa: F401  (registers the edgeinfer:: custom ops)

    if attention_target not in ATTENTION_TARGETS:
        raise ValueError(f"unknown attention target {attention_target!r}; expected one of {ATTENTION_TARGETS}")
    if mask not in MASK_KINDS or (mask == "query_key" and attention_target != "standard"):
        raise ValueError(f"mask {mask!r} with attention {attention_target!r}: query_key masks need 'standard'")
    if mask == "query_key":
        return {
            torch.ops.edgeinfer.quick_gelu.default: quick_gelu,
            torch.ops.edgeinfer.attention.default: attention_query_key,
            torch.ops.edgeinfer.rotary_attention.default: rotary_attention_query_key,
        }
    if attention_target == "unfused":
        return {
            torch.ops.edgeinfer.quick_gelu.default: quick_gelu_unfused,
            torch.ops.edgeinfer.attention.default: attention_unfused,
            torch.ops.edgeinfer.rotary_attention.default: rotary_attention_unfused,
            torch.ops.aten.gelu.default: gelu_unfused,
        }
    standard = attention_target == "standard"
    return {
        torch.ops.edgeinfer.quick_gelu.default: quick_gelu,
        torch.ops.edgeinfer.attention.default: attention_standard if standard else attention_contrib,
        torch.ops.edgeinfer.rotary_attention.default: rotary_attention_standard if standard else rotary_attention_contrib,
    }


def encoder_attention_standard(q, k, v, attention_mask, num_heads: int):
    """Bidirectional attention as one opset-23 `Attention`, the key mask turned into an additive bias."""
    key_ok = op.Unsqueeze(op.Cast(attention_mask, to=9), [1, 2])  # (batch, 1, 1, seq), 9 = BOOL
    bias = op.Where(key_ok, op.Constant(value_float=0.0), op.Constant(value_float=MASK_VALUE))
    seq = op.Shape(attention_mask, start=1, end=2)
    # onnxruntime wants the mask's query axis spelled out: (batch, 1, seq, seq)
    bias = op.Expand(bias, op.Concat(op.Shape(attention_mask, start=0, end=1), op.Constant(value_ints=[1]), seq, seq, axis=0))
    y, _, _, _ = op.Attention(q, k, v, bias, q_num_heads=num_heads, kv_num_heads=num_heads)
    return y


def encoder_attention_contrib(q, k, v, attention_mask, num_heads: int):
    """Bidirectional attention as onnxruntime's `MultiHeadAttention`, fed the (batch, seq) key mask as int32."""
    return MultiHeadAttention(q, k, v, None, op.Cast(attention_mask, to=6), num_heads=num_heads)  # 6 = INT32


ENCODER_ATTENTION = {"standard": encoder_attention_standard, "contrib": encoder_attention_contrib}


def encoder_translation_table(attention_target: str = "standard") -> dict:
    """Custom-op translations for encoders (bidirectional attention, GELU): opset-23 `Attention` ("standard", any
    provider) or onnxruntime's `MultiHeadAttention` ("contrib", its own optimized CPU and CUDA kernels)."""
    import torch

    if attention_target not in ENCODER_ATTENTION:
        raise ValueError(f"unknown encoder attention target {attention_target!r}; expected one of {sorted(ENCODER_ATTENTION)}")
    return {**translation_table("standard"),
            torch.ops.edgeinfer.encoder_attention.default: ENCODER_ATTENTION[attention_target]}
