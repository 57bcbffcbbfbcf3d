"""The Llama-family decoder (Llama, Qwen2) in plain PyTorch, with the GPT's graph signature.

RMSNorm, rotary position embeddings, a SwiGLU MLP and grouped-query attention (fewer key/value heads than query
heads). Its forward takes and returns what `export.gpt.GPT`'s does, so `onnx_export.export_gpt_bundle` and the
runtime treat both alike; the cache holds `n_kv_head` heads.

Rotary tables (cos and sin, half a head wide) are precomputed for every position up to `n_positions` and read at
`position_ids`, so the graph sees the same explicit positions a GPT sees (the runtime's left or right padding needs
nothing else); `kernels.modules.rotary_attention` rotates and attends in one exported op. q, k, v are one packed
projection and gate, up another: two MatMuls where the checkpoint has five.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeinfer.kernels.modules import rotary_attention


@dataclass
class LlamaConfig:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False  # Qwen2: True
    o_bias: bool = False
    mlp_bias: bool = False
    tied_lm_head: bool = False
    rope_type: str = "default"
    n_segments: int = 0  # the graph signature's; a Llama has no segment embedding


class RMSNorm(nn.Module):
    """x / rms(x) · weight: LayerNorm without centring or bias."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = cfg.n_head, cfg.n_kv_head
        self.qkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=cfg.o_bias)

    def forward(self, x, rope, past_k, past_v, attention_mask):
        y, present_k, present_v = rotary_attention(self.qkv(x), past_k, past_v, attention_mask, *rope, self.n_head,
                                                   self.n_kv_head)
        return self.o_proj(y), present_k, present_v


class SwiGLU(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(cfg.n_embd, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.n_embd, bias=cfg.mlp_bias)

    def forward(self, x):
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x, rope, past_k, past_v, attention_mask):
        a, present_k, present_v = self.self_attn(self.input_layernorm(x), rope, past_k, past_v, attention_mask)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), present_k, present_v


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig, inv_freq: torch.Tensor, rope_scale: float = 1.0) -> None:
        """inv_freq (head_dim/2,) and rope_scale (a factor on cos and sin: YaRN's attention factor) come from the
        checkpoint's rope parameters (`hf_import.rope_frequencies`)."""
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tied_lm_head:
            self.lm_head.weight = self.embed_tokens.weight
        # float32 products of position and frequency, as transformers computes them
        angles = torch.arange(cfg.n_positions, dtype=torch.float32)[:, None] * inv_freq.float()[None, :]
        self.register_buffer("rope_cos", angles.cos() * rope_scale, persistent=False)
        self.register_buffer("rope_sin", angles.sin() * rope_scale, persistent=False)

    def manifest_fields(self) -> dict:
        """What the bundle manifest says about this architecture."""
        cfg = self.cfg
        return {"model": {
            "architecture": "llama",
            "n_layer": cfg.n_layer,
            "n_head": cfg.n_head,
            "n_kv_head": cfg.n_kv_head,
            "head_dim": cfg.head_dim,
            "n_embd": cfg.n_embd,
            "vocab_size": cfg.vocab_size,
            "max_positions": cfg.n_positions,
            "n_segments": 0,
            "tied_lm_head": cfg.tied_lm_head,
            "rope_type": cfg.rope_type,
        }}

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                logits_positions: torch.Tensor, past: list[torch.Tensor], token_type_ids: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`GPT.forward`'s contract: logits at `logits_positions` and the present caches (token_type_ids unused)."""
        x = self.embed_tokens(input_ids)
        rope = (position_ids, self.rope_cos, self.rope_sin)
        presents = []
        for i, block in enumerate(self.layers):
            x, present_k, present_v = block(x, rope, past[2 * i], past[2 * i + 1], attention_mask)
            presents += [present_k, present_v]
        x = self.norm(x)
        index = logits_positions.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        return self.lm_head(torch.gather(x, 1, index)), presents

    def training_logits(self, input_ids: torch.Tensor, token_type_ids=None) -> torch.Tensor:
        """All-position logits of full (unpadded) rows, no cache: the eager reference of the parity check."""
        batch, seq = input_ids.shape
        positions = torch.arange(seq).expand(batch, seq)
        empty = torch.zeros(batch, self.cfg.n_kv_head, 0, self.cfg.head_dim)
        logits, _ = self.forward(input_ids, positions, torch.ones_like(input_ids), positions,
                                 [empty] * (2 * self.cfg.n_layer))
        return logits
