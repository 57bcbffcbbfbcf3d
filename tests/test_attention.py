"""Attention: the numpy reference on its edge cases, and each ONNX emission target against it."""

from __future__ import annotations

import functools

import numpy as np
import onnxruntime as ort
import pytest

from edgeinfer.kernels.attention import attention_reference

torch = pytest.importorskip("torch")


def _naive(q, k, v, num_heads, key_mask):
    """Loop-by-loop attention, independent of the vectorised reference."""
    b, s, hidden = q.shape
    d = hidden // num_heads
    total = k.shape[1]
    out = np.zeros((b, s, hidden))
    for bi in range(b):
        for h in range(num_heads):
            sl = slice(h * d, (h + 1) * d)
            for i in range(s):
                keys = [j for j in range(total) if j <= total - s + i and key_mask[bi, j]]
                if not keys:
                    continue
                scores = np.array([q[bi, i, sl] @ k[bi, j, sl] / np.sqrt(d) for j in keys])
                w = np.exp(scores - scores.max())
                w /= w.sum()
                out[bi, i, sl] = sum(wj * v[bi, j, sl] for wj, j in zip(w, keys))
    return out


@pytest.mark.parametrize("past, seq", [(0, 1), (0, 5), (4, 1), (3, 4)])
def test_reference_against_naive_loops(past, seq):
    rng = np.random.default_rng()
    b, h, d = 3, 2, 4
    q = rng.standard_normal((b, seq, h * d))
    k = rng.standard_normal((b, past + seq, h * d))
    v = rng.standard_normal((b, past + seq, h * d))
    mask = np.ones((b, past + seq), dtype=np.int64)
    mask[1, : (past + seq) // 2] = 0  # left padding
    mask[2, :] = 0  # fully padded row
    split = lambda t: t.reshape(b, -1, h, d).transpose(0, 2, 1, 3)
    out, pk, _ = attention_reference(
        q, k[:, past:], v[:, past:], h, split(k[:, :past]), split(v[:, :past]), key_mask=mask
    )
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, _naive(q, k, v, h, mask), atol=1e-12)
    np.testing.assert_array_equal(out[2], 0.0)
    np.testing.assert_array_equal(pk, split(k))


class _Layer(torch.nn.Module):
    def __init__(self, heads):
        super().__init__()
        self.heads = heads

    def forward(self, q, k, v, past_k, past_v, attention_mask):
        from edgeinfer.kernels.modules import causal_attention

        return causal_attention(q, k, v, past_k, past_v, attention_mask, self.heads)


HEADS, HEAD_DIM = 3, 8


@functools.cache
def emitted(target: str) -> ort.InferenceSession:
    """A one-layer graph holding the attention op as `target` emits it."""
    from edgeinfer.kernels.onnx_emit import translation_table

    auto = torch.export.Dim.AUTO
    x = [torch.randn(2, 3, HEADS * HEAD_DIM) for _ in range(3)]
    past = [torch.randn(2, HEADS, 4, HEAD_DIM) for _ in range(2)]
    args = (*x, *past, torch.ones(2, 7, dtype=torch.int64))
    dyn = ({0: auto, 1: auto},) * 3 + ({0: auto, 2: auto},) * 2 + ({0: auto, 1: auto},)
    program = torch.onnx.export(
        _Layer(HEADS), args, dynamo=True, opset_version=23, dynamic_shapes=dyn,
        custom_translation_table=translation_table(target), verbose=False,
    )
    ops = [n.op_type for n in program.model_proto.graph.node]
    assert ops.count("Attention" if target == "standard" else "GroupQueryAttention") == 1
    assert "Softmax" not in ops
    return ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(session, q, k, v, pk, pv, mask):
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, [q, k, v, pk, pv, mask])))


@pytest.mark.parametrize("past, seq", [(0, 1), (0, 6), (5, 1), (3, 4)])
def test_standard_target_matches_reference(past, seq):
    session = emitted("standard")
    rng = np.random.default_rng()
    b = int(rng.integers(3, 6))
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    q, k, v = (f32(b, seq, HEADS * HEAD_DIM) for _ in range(3))
    pk, pv = f32(b, HEADS, past, HEAD_DIM), f32(b, HEADS, past, HEAD_DIM)
    mask = np.ones((b, past + seq), dtype=np.int64)
    for row in range(1, b - 1):  # ragged rows, left-padded
        mask[row, : rng.integers(0, past + seq)] = 0
    mask[b - 1] = 0  # a fully padded row
    y, present_k, present_v = _run(session, q, k, v, pk, pv, mask)
    ref, ref_k, ref_v = attention_reference(q, k, v, HEADS, pk, pv, key_mask=mask)
    assert np.isfinite(y).all()
    for row in range(b):  # a query that sees no key has no defined output: only finiteness is required
        visible = np.array([mask[row, : past + i + 1].any() for i in range(seq)])
        np.testing.assert_allclose(y[row, visible], ref[row, visible], atol=1e-5)
    np.testing.assert_array_equal(present_k, ref_k)
    np.testing.assert_array_equal(present_v, ref_v)


def _bind_and_run(session, q, k, v, k_buf, v_buf, mask):
    names = [i.name for i in session.get_inputs()]
    outs = [o.name for o in session.get_outputs()]
    binding = session.io_binding()
    for name, value in zip(names, (q, k, v)):
        binding.bind_cpu_input(name, value)
    binding.bind_ortvalue_input(names[3], k_buf)
    binding.bind_ortvalue_input(names[4], v_buf)
    binding.bind_cpu_input(names[5], mask)
    binding.bind_output(outs[0])
    binding.bind_ortvalue_output(outs[1], k_buf)  # present written into the past buffer: no copy
    binding.bind_ortvalue_output(outs[2], v_buf)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]


def test_contrib_target_ragged_in_place_cache():
    """GroupQueryAttention: a right-padded ragged prompt, then decode steps into one shared max-length buffer."""
    session = emitted("contrib")
    rng = np.random.default_rng()
    lengths = np.array([2, 6, 4])
    b, max_len, hidden = len(lengths), 12, HEADS * HEAD_DIM
    k_buf, v_buf = (ort.OrtValue.ortvalue_from_numpy(np.zeros((b, HEADS, max_len, HEAD_DIM), np.float32))
                    for _ in range(2))
    seen = {name: [np.zeros((1, 0, hidden), np.float32) for _ in range(b)] for name in "kv"}
    step_len = int(lengths.max())
    for step in range(3):
        new = {name: rng.standard_normal((b, step_len, hidden)).astype(np.float32) for name in "qkv"}
        n_new = lengths if step == 0 else np.ones(b, dtype=int)
        total = lengths if step == 0 else lengths + 1
        mask = (np.arange(total.max())[None] < total[:, None]).astype(np.int64)
        y = _bind_and_run(session, new["q"], new["k"], new["v"], k_buf, v_buf, mask)
        for row in range(b):
            count = n_new[row]
            q, k, v = (new[name][row : row + 1, :count] for name in "qkv")
            ref, _, _ = attention_reference(q, k, v, HEADS, _heads(seen["k"][row]), _heads(seen["v"][row]))
            np.testing.assert_allclose(y[row : row + 1, :count], ref, atol=1e-5)
            seen["k"][row] = np.concatenate([seen["k"][row], k], axis=1)
            seen["v"][row] = np.concatenate([seen["v"][row], v], axis=1)
        lengths = total
        step_len = 1


def _heads(x):
    b, s, _ = x.shape
    return x.reshape(b, s, HEADS, HEAD_DIM).transpose(0, 2, 1, 3)


ROTARY_HEAD_DIM = 16  # GroupQueryAttention's built-in rotary wants a multiple of 16


class _RotaryLayer(torch.nn.Module):
    def __init__(self, heads, kv_heads, positions=16):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        angles = torch.arange(positions)[:, None] * (1.0 / 100 ** (torch.arange(0, ROTARY_HEAD_DIM, 2) / ROTARY_HEAD_DIM))[None]
        self.register_buffer("cos", angles.cos())
        self.register_buffer("sin", angles.sin())

    def forward(self, qkv, past_k, past_v, attention_mask, position_ids):
        from edgeinfer.kernels.modules import rotary_attention

        return rotary_attention(qkv, past_k, past_v, attention_mask, position_ids, self.cos, self.sin, self.heads,
                                self.kv_heads)


@pytest.mark.parametrize("target, kv_heads", [("standard", 2), ("standard", 1), ("contrib", 2), ("unfused", 4),
                                              ("unfused", 1)])
def test_rotary_grouped_query_attention_matches_reference(target, kv_heads):
    """A prompt then a cached step, q and k rotated at the given positions, against the numpy references."""
    from edgeinfer.kernels.attention import rotary_reference
    from edgeinfer.kernels.onnx_emit import translation_table

    heads, b, width = 4, 2, (4 + 2 * kv_heads) * ROTARY_HEAD_DIM
    layer = _RotaryLayer(heads, kv_heads)
    auto = torch.export.Dim.AUTO
    example = (torch.randn(b, 3, width), torch.zeros(b, kv_heads, 4, ROTARY_HEAD_DIM), torch.zeros(b, kv_heads, 4, ROTARY_HEAD_DIM),
               torch.ones(b, 7, dtype=torch.int64), torch.arange(4, 7).expand(b, 3))
    dyn = ({0: auto, 1: auto}, {0: auto, 2: auto}, {0: auto, 2: auto}, {0: auto, 1: auto}, {0: auto, 1: auto})
    proto = torch.onnx.export(layer, example, dynamo=True, opset_version=23, dynamic_shapes=dyn,
                              custom_translation_table=translation_table(target), verbose=False).model_proto
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count({"standard": "RotaryEmbedding", "contrib": "GroupQueryAttention", "unfused": "Softmax"}[target]) \
        == {"standard": 2, "contrib": 1, "unfused": 1}[target]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(kv_heads)
    cos, sin = layer.cos.numpy(), layer.sin.numpy()
    past_k = past_v = np.zeros((b, kv_heads, 8 if target == "contrib" else 0, ROTARY_HEAD_DIM), np.float32)
    ref_k = ref_v = None
    for start, seq in ((0, 5), (5, 1)):
        qkv = rng.standard_normal((b, seq, width)).astype(np.float32)
        # row 1's cached step at a position other than its slot (GroupQueryAttention takes a prompt's from its slots)
        positions = np.arange(start, start + seq)[None].repeat(b, 0) + np.array([[0], [3 * bool(start)]])
        mask = np.ones((b, start + seq), dtype=np.int64)
        y, past_k, past_v = session.run(None, dict(zip([i.name for i in session.get_inputs()],
                                                       [qkv, past_k, past_v, mask, positions])))
        q, k, v = np.split(qkv, [heads * ROTARY_HEAD_DIM, (heads + kv_heads) * ROTARY_HEAD_DIM], axis=-1)
        ref, ref_k, ref_v = attention_reference(rotary_reference(q, cos, sin, positions, heads),
                                                rotary_reference(k, cos, sin, positions, kv_heads), v, heads,
                                                ref_k, ref_v, kv_num_heads=kv_heads)
        np.testing.assert_allclose(y, ref, atol=1e-5)
        np.testing.assert_allclose(past_k[:, :, : start + seq], ref_k, atol=1e-5)
