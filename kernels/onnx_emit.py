"""ONNX emission of the fused ops: onnxscript translations handed to the torch dynamo exporter.

Two attention targets, picked at export:
- "standard": ONNX opset-23 `Attention`, fed an additive mask built from the key mask (causal + padding).
  Past and present caches are separate tensors (present = past + new); runs on any onnxruntime provider.
- "contrib": onnxruntime's `com.microsoft.GroupQueryAttention`. It reads the per-row length from the key
  mask (seqlens_k) and writes new keys in place when past and present are bound to one max-length buffer,
  so decoding needs no per-step cache copy. Rows must be right-padded.
The mask sub-expressions are identical in every layer; onnxruntime's common-subexpression pass merges them.
"""

from __future__ import annotations

from onnx.defs import OpSchema
from onnxscript import opset23 as op
from onnxscript.values import Op, Opset

from .attention import MASK_VALUE
from .gelu import SIGMOID_ALPHA

ATTENTION_TARGETS = ("standard", "contrib")
_msft = Opset("com.microsoft", 1)


def _contrib_op(name: str, inputs: list[str], outputs: list[str], attributes: dict[str, OpSchema.AttrType]) -> Op:
    """An onnxscript op for an onnxruntime contrib op; onnx ships no schemas for these, so we declare them.

    Inputs named `*_k` or `total_*` are int32, all others float.
    """

    def param(n: str) -> OpSchema.FormalParameter:
        return OpSchema.FormalParameter(n, "M" if n.startswith(("seqlens", "total")) else "T")

    schema = OpSchema(
        name,
        "com.microsoft",
        1,
        inputs=[param(n) for n in inputs],
        outputs=[param(n) for n in outputs],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], "")],
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


def quick_gelu(x, alpha: float = SIGMOID_ALPHA):
    return QuickGelu(x, alpha=alpha)


def attention_standard(q, k, v, past_k, past_v, attention_mask, num_heads: int):
    total = op.Squeeze(op.Shape(attention_mask, start=1, end=2))
    q_len = op.Squeeze(op.Shape(q, start=1, end=2))
    zero = op.Constant(value_int=0)
    one = op.Constant(value_int=1)
    key_pos = op.Range(zero, total, one)
    query_pos = op.Add(op.Range(zero, q_len, one), op.Sub(total, q_len))
    causal = op.LessOrEqual(op.Unsqueeze(key_pos, [0]), op.Unsqueeze(query_pos, [1]))
    key_ok = op.Unsqueeze(op.Cast(attention_mask, to=9), [1, 2])  # 9 = BOOL
    visible = op.And(op.Unsqueeze(causal, [0, 1]), key_ok)
    bias = op.Where(visible, op.Constant(value_float=0.0), op.Constant(value_float=MASK_VALUE))
    y, present_k, present_v, _ = op.Attention(
        q, k, v, bias, past_k, past_v, q_num_heads=num_heads, kv_num_heads=num_heads
    )
    return y, present_k, present_v


def attention_contrib(q, k, v, past_k, past_v, attention_mask, num_heads: int):
    seqlens_k = op.Cast(op.Sub(op.ReduceSum(attention_mask, [1], keepdims=0), op.Constant(value_int=1)), to=6)
    total = op.Cast(op.Squeeze(op.Shape(attention_mask, start=1, end=2)), to=6)  # 6 = INT32
    return GroupQueryAttention(
        q, k, v, past_k, past_v, seqlens_k, total, num_heads=num_heads, kv_num_heads=num_heads
    )


def translation_table(attention_target: str) -> dict:
    """Custom-op translations for `torch.onnx.export(..., custom_translation_table=...)`."""
    import torch

    from . import modules  # noqa: F401  (registers the edgeinfer:: custom ops)

    if attention_target not in ATTENTION_TARGETS:
        raise ValueError(f"unknown attention target {attention_target!r}; expected one of {ATTENTION_TARGETS}")
    attention = attention_standard if attention_target == "standard" else attention_contrib
    return {
        torch.ops.edgeinfer.quick_gelu.default: quick_gelu,
        torch.ops.edgeinfer.attention.default: attention,
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


def encoder_translation_table() -> dict:
    """Custom-op translations for encoders (bidirectional attention, GELU) on the standard target."""
    import torch

    return {**translation_table("standard"), torch.ops.edgeinfer.encoder_attention.default: encoder_attention_standard}
