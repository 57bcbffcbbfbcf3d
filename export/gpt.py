"""A GPT decoder in plain PyTorch, built on the fused-op modules of `edgeinfer.kernels`.

One model covers the checkpoints we train (dialogue with segment ids, Xiangqi moves) and imported GPT-2s:
pre-LN or post-LN, learned positions, optional segment (token-type) embeddings, tied or untied LM head,
GELU form as a config choice, and the attention kind (`attention_kind`: dot-product, or the synthesizers of
`synthesizer.py`, whose dense and random kinds cache values only). The forward signature is the ONNX graph's
signature.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeinfer.kernels.modules import Gelu, causal_attention
from edgeinfer.kernels.synthesizer import split_heads
from edgeinfer.lm.step import query_key_mask

from .synthesizer import VALUE_ONLY_KINDS, SynthesizerAttention, check_attention_kind


@dataclass
class GPTConfig:
    vocab_size: int
    n_positions: int = 512
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_segments: int = 0  # 0: no segment embedding
    pre_ln: bool = True
    tied_lm_head: bool = True
    gelu: str = "tanh"
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0
    attention_kind: str = "dot"  # "dot", "dense", "random", "dense+dot" (synthesizer.py)
    synth_rank: int = 0  # random synthesizer: rank of its factorized score matrix (0: the full matrix)
    bidirectional_prefix: int = 0  # the first N positions see each other both ways (a prefix LM over a board prompt)

    def __post_init__(self) -> None:
        check_attention_kind(self.attention_kind)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def n_kv_head(self) -> int:
        """Heads in the KV cache: every query head has its own."""
        return self.n_head

    @property
    def cache_parts(self) -> tuple[str, ...]:
        """What each layer caches per token, in graph order: keys and values, or values only (synthesizers whose
        scores do not read keys)."""
        return ("value",) if self.attention_kind in VALUE_ONLY_KINDS else ("key", "value")

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd={cfg.n_embd} is not divisible by n_head={cfg.n_head}")
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, past, attention_mask):
        q, k, v = self.qkv(x).split(x.shape[-1], dim=-1)
        y, present_k, present_v = causal_attention(q, k, v, past[0], past[1], attention_mask, self.n_head)
        return self.dropout(self.proj(y)), [present_k, present_v]

    def cache(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The keys and values of x in cache layout (batch, heads, seq, head_dim), without the queries: what a
        later chunk attends to."""
        width = x.shape[-1]
        k, v = F.linear(x, self.qkv.weight[width:], self.qkv.bias[width:]).split(width, dim=-1)
        return [split_heads(k, self.n_head), split_heads(v, self.n_head)]


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.act = Gelu(cfg.gelu)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.pre_ln = cfg.pre_ln
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.attn = SelfAttention(cfg) if cfg.attention_kind == "dot" else SynthesizerAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, past, attention_mask):
        if self.pre_ln:
            a, presents = self.attn(self.ln_1(x), past, attention_mask)
            x = x + a
            return x + self.mlp(self.ln_2(x)), presents
        a, presents = self.attn(x, past, attention_mask)
        x = self.ln_1(x + a)
        return self.ln_2(x + self.mlp(x)), presents

    def cache(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The cache this block's attention keeps for x (dot-product attention only)."""
        return self.attn.cache(self.ln_1(x) if self.pre_ln else x)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.wse = nn.Embedding(cfg.n_segments, cfg.n_embd) if cfg.n_segments else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_eps) if cfg.pre_ln else nn.Identity()
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tied_lm_head:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def manifest_fields(self) -> dict:
        """What the bundle manifest says about this architecture."""
        cfg = self.cfg
        return {
            "model": {
                "architecture": "gpt",
                "n_layer": cfg.n_layer,
                "n_head": cfg.n_head,
                "head_dim": cfg.head_dim,
                "n_embd": cfg.n_embd,
                "vocab_size": cfg.vocab_size,
                "max_positions": cfg.n_positions,
                "n_segments": cfg.n_segments,
                "pre_ln": cfg.pre_ln,
                "tied_lm_head": cfg.tied_lm_head,
                **({"attention_kind": cfg.attention_kind} if cfg.attention_kind != "dot" else {}),
                **({"bidirectional_prefix": cfg.bidirectional_prefix} if cfg.bidirectional_prefix else {}),
            },
            "gelu": cfg.gelu,
        }

    def empty_cache(self, batch: int) -> list[torch.Tensor]:
        """Past cache tensors of length 0, layer by layer in `cfg.cache_parts` order ([k0, v0, k1, v1, ...])."""
        shape = (batch, self.cfg.n_head, 0, self.cfg.head_dim)
        return [torch.zeros(shape) for _ in range(len(self.cfg.cache_parts) * self.cfg.n_layer)]

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor, token_type_ids=None, inputs_embeds=None):
        """Token (or given) embeddings plus position and segment embeddings."""
        x = (self.wte(input_ids) if inputs_embeds is None else inputs_embeds) + self.wpe(position_ids)
        if self.wse is not None:
            x = x + self.wse(token_type_ids)
        return self.drop(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_positions: torch.Tensor,
        past: list[torch.Tensor],
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits at `logits_positions` (batch, k) of this chunk, and the present caches.

        attention_mask (batch, past+seq) marks real tokens with 1; position_ids are absolute positions.
        Asking only for the positions that are needed (the last one when decoding) skips the LM head
        for the rest.
        """
        x = self.embed(input_ids, position_ids, token_type_ids)
        parts = len(self.cfg.cache_parts)
        presents = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, past[parts * i : parts * (i + 1)], attention_mask)
            presents += present
        x = self.ln_f(x)
        index = logits_positions.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        return self.lm_head(torch.gather(x, 1, index)), presents

    def training_logits(self, input_ids: torch.Tensor, token_type_ids=None, inputs_embeds=None,
                        from_position: int = 0) -> torch.Tensor:
        """Logits at positions `from_position` on for teacher-forced training on right-padded batches (no cache).

        `inputs_embeds` replaces the token embeddings (TeaForN feeds the model its own expected embeddings). With
        dot-product attention, the last block runs its queries, MLP and LM head only from `from_position` on,
        attending to the earlier positions' keys and values: a loss that starts late (a board prompt's 92 squares
        carry no target, the move's 4 characters do) skips most of that block's work.
        """
        batch, seq = input_ids.shape
        positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        mask = torch.ones_like(input_ids)
        if self.cfg.bidirectional_prefix:  # the runtime's own mask rule, (batch, seq, seq)
            mask = torch.from_numpy(query_key_mask(np.ones((1, seq), np.int64), seq, self.cfg.bidirectional_prefix))
            mask = mask.to(input_ids.device).expand(batch, seq, seq)
        x = self.embed(input_ids, positions, token_type_ids, inputs_embeds)
        empty = [torch.zeros(batch, self.cfg.n_head, 0, self.cfg.head_dim, device=input_ids.device)] * len(
            self.cfg.cache_parts)
        *blocks, last = self.blocks
        for block in blocks:
            x, _ = block(x, empty, mask)
        if from_position and self.cfg.attention_kind == "dot":
            past = last.cache(x[:, :from_position])
            later_mask = mask[:, from_position:] if mask.dim() == 3 else mask  # a key mask spans past and new keys
            x, _ = last(x[:, from_position:], past, later_mask)
        else:
            x = last(x, empty, mask)[0][:, from_position:]
        return self.lm_head(self.ln_f(x))

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor, token_type_ids=None) -> torch.Tensor:
        """Cross-entropy of next-token prediction; targets of -100 are ignored. Logits are computed from the first
        position that has a target in any row (`training_logits(from_position=...)`)."""
        scored = (targets != -100).any(0).nonzero()
        start = int(scored[0, 0]) if len(scored) else 0
        logits = self.training_logits(input_ids, token_type_ids, from_position=start)
        targets = targets[:, start:]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
