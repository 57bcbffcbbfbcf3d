"""Import Hugging Face `GPT2LMHeadModel` checkpoints (a local folder or an in-memory model; never the hub)."""

from __future__ import annotations

from pathlib import Path

import torch

from .gpt import GPT, GPTConfig
from .hf_config import read_hf_config
from .onnx_export import ExportError

# transformers' activation names -> our GELU forms
_HF_ACTIVATIONS = {
    "gelu": "exact",
    "gelu_new": "tanh",
    "gelu_pytorch_tanh": "tanh",
    "gelu_fast": "tanh",
    "quick_gelu": "sigmoid",
}


def load_hf_gpt2(source):
    """A `GPT2LMHeadModel` from a local folder (offline) or the model itself, in eval mode."""
    from transformers import GPT2LMHeadModel

    if isinstance(source, (str, Path)):
        read_hf_config(source, "causal-lm")
        source = GPT2LMHeadModel.from_pretrained(Path(source), local_files_only=True)
    return source.eval()


def config_from_hf(hf_config, gelu: str | None = None) -> GPTConfig:
    unsupported = [
        name
        for name in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention")
        if getattr(hf_config, name, False)
    ]
    if not getattr(hf_config, "scale_attn_weights", True):
        unsupported.append("scale_attn_weights=False")
    if unsupported:
        raise ExportError(f"unsupported GPT-2 options: {', '.join(unsupported)}")
    activation = hf_config.activation_function
    if gelu is None:
        if activation not in _HF_ACTIVATIONS:
            raise ExportError(f"unsupported activation {activation!r}; known: {sorted(_HF_ACTIVATIONS)}")
        gelu = _HF_ACTIVATIONS[activation]
    return GPTConfig(
        vocab_size=hf_config.vocab_size,
        n_positions=hf_config.n_positions,
        n_embd=hf_config.n_embd,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        pre_ln=True,
        tied_lm_head=bool(getattr(hf_config, "tie_word_embeddings", True)),
        gelu=gelu,
        layer_norm_eps=hf_config.layer_norm_epsilon,
    )


@torch.no_grad()
def gpt_from_hf(hf_model, gelu: str | None = None) -> GPT:
    """Our GPT with the weights of a GPT2LMHeadModel (GPT-2's Conv1D stores weights as (in, out))."""
    cfg = config_from_hf(hf_model.config, gelu)
    model = GPT(cfg).eval()
    src = hf_model.transformer
    model.wte.weight.copy_(src.wte.weight)
    model.wpe.weight.copy_(src.wpe.weight)
    for ours, theirs in zip(model.blocks, src.h):
        ours.ln_1.load_state_dict(theirs.ln_1.state_dict())
        ours.ln_2.load_state_dict(theirs.ln_2.state_dict())
        for linear, conv in (
            (ours.attn.qkv, theirs.attn.c_attn),
            (ours.attn.proj, theirs.attn.c_proj),
            (ours.mlp.fc, theirs.mlp.c_fc),
            (ours.mlp.proj, theirs.mlp.c_proj),
        ):
            linear.weight.copy_(conv.weight.t())
            linear.bias.copy_(conv.bias)
    model.ln_f.load_state_dict(src.ln_f.state_dict())
    if not cfg.tied_lm_head:
        model.lm_head.weight.copy_(hf_model.lm_head.weight)
    return model


def special_tokens_from_hf(hf_config) -> dict[str, int]:
    names = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "pad_token_id"}
    found = {ours: getattr(hf_config, theirs, None) for ours, theirs in names.items()}
    # tiny test configs keep GPT-2's 50256 with a smaller vocabulary: such ids name no token
    return {
        name: int(value)
        for name, value in found.items()
        if isinstance(value, int) and 0 <= value < hf_config.vocab_size
    }
