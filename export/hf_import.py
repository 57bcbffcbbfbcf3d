"""Import Hugging Face checkpoints into our decoders: one function per architecture (`IMPORTERS`).

Each importer lists the tensors its architecture has and copies them one by one (nanoGPT's `from_pretrained`
style). A checkpoint with a missing or an unexpected tensor is refused: transformers would fill a missing one with
random numbers and only warn, and a bundle of those would still pass a parity check against the same model.
Sources are a local folder (read with safetensors or torch, never the hub) or an in-memory transformers model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from edgeinfer.errors import InputError

from .gpt import GPT, GPTConfig
from .hf_config import architecture, read_hf_config
from .llama import Llama, LlamaConfig
from .onnx_export import ExportError

# transformers' activation names -> our GELU forms
_HF_ACTIVATIONS = {
    "gelu": "exact",
    "gelu_new": "tanh",
    "gelu_pytorch_tanh": "tanh",
    "gelu_fast": "tanh",
    "quick_gelu": "sigmoid",
}
# rope types whose frequencies are fixed (transformers' "dynamic" and "longrope" change them with the length)
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")

State = Mapping[str, torch.Tensor]


# ---------------------------------------------------------------- checkpoint files
def read_checkpoint(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder: model.safetensors or pytorch_model.bin, sharded or not."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name, load in (("model.safetensors", load_file),
                       ("pytorch_model.bin", lambda path: torch.load(path, map_location="cpu", weights_only=True))):
        index = folder / f"{name}.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        elif (folder / name).is_file():
            files = [name]
        else:
            continue
        state = {}
        for file in files:
            state.update(load(folder / file))
        return state
    raise InputError(f"{folder} holds no model.safetensors or pytorch_model.bin (sharded or not)")


def check_keys(state: State, expected: set[str], optional: set[str] = frozenset()) -> None:
    """Refuse a checkpoint whose tensors are not exactly `expected` (plus any of `optional`)."""
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected - optional)
    if missing or unexpected:
        parts = [f"{len(names)} {kind} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
                 for kind, names in (("missing", missing), ("unexpected", unexpected)) if names]
        raise ExportError(f"the checkpoint's tensors are not its architecture's: {'; '.join(parts)}; no bundle written")


def _copy(ours: torch.Tensor, theirs: torch.Tensor, name: str) -> None:
    if ours.shape != theirs.shape:
        raise ExportError(f"checkpoint tensor {name} has shape {tuple(theirs.shape)}; its config makes it "
                          f"{tuple(ours.shape)}")
    ours.copy_(theirs)


# ---------------------------------------------------------------- GPT-2
def gpt2_config(hf_config, gelu: str | None = None) -> GPTConfig:
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
def import_gpt2(state: State, hf_config, gelu: str | None = None) -> GPT:
    """Our GPT from a `GPT2LMHeadModel` state dict (GPT-2's Conv1D stores weights as (in, out))."""
    model = GPT(gpt2_config(hf_config, gelu)).eval()
    # the original OpenAI checkpoints lack the "transformer." prefix and keep the causal mask as a tensor
    prefix = "transformer." if any(key.startswith("transformer.") for key in state) else ""
    names = {"wte.weight": "wte.weight", "wpe.weight": "wpe.weight", "ln_f.weight": "ln_f.weight",
             "ln_f.bias": "ln_f.bias"}
    for i in range(model.cfg.n_layer):
        for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                             ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            for part in ("weight", "bias"):
                names[f"blocks.{i}.{ours}.{part}"] = f"h.{i}.{theirs}.{part}"
    names = {ours: prefix + theirs for ours, theirs in names.items()}
    if not model.cfg.tied_lm_head:
        names["lm_head.weight"] = "lm_head.weight"
    buffers = {prefix + f"h.{i}.attn.{b}" for i in range(model.cfg.n_layer) for b in ("bias", "masked_bias")}
    check_keys(state, set(names.values()), {"lm_head.weight", *buffers})
    params = dict(model.named_parameters())
    conv1d = (".attn.qkv.weight", ".attn.proj.weight", ".mlp.fc.weight", ".mlp.proj.weight")
    for ours, theirs in names.items():
        _copy(params[ours], state[theirs].t() if ours.endswith(conv1d) else state[theirs], theirs)
    return model


# ---------------------------------------------------------------- Llama family
def rope_frequencies(hf_config) -> tuple[torch.Tensor, float]:
    """The rotary inverse frequencies and cos/sin factor of a config, by transformers' own functions."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    params = hf_config.rope_parameters
    kind = params.get("rope_type", "default")
    if kind not in STATIC_ROPE_TYPES:
        raise ExportError(f"rope_type {kind!r} is not supported (its frequencies change with the sequence length); "
                          f"supported: {', '.join(STATIC_ROPE_TYPES)}")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ExportError(f"partial_rotary_factor {params['partial_rotary_factor']} is not supported; only 1.0")
    init = LlamaRotaryEmbedding.compute_default_rope_parameters if kind == "default" else ROPE_INIT_FUNCTIONS[kind]
    return init(hf_config)


def llama_config(hf_config, *, qkv_bias: bool, o_bias: bool, mlp_bias: bool) -> LlamaConfig:
    if hf_config.hidden_act != "silu":
        raise ExportError(f"unsupported activation {hf_config.hidden_act!r}; the Llama family's MLP is SwiGLU ('silu')")
    if getattr(hf_config, "use_sliding_window", False):
        raise ExportError("sliding-window attention (use_sliding_window) is not supported")
    return LlamaConfig(
        vocab_size=hf_config.vocab_size,
        n_positions=hf_config.max_position_embeddings,
        n_embd=hf_config.hidden_size,
        n_layer=hf_config.num_hidden_layers,
        n_head=hf_config.num_attention_heads,
        n_kv_head=hf_config.num_key_value_heads or hf_config.num_attention_heads,
        head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads,
        intermediate_size=hf_config.intermediate_size,
        rms_norm_eps=hf_config.rms_norm_eps,
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=mlp_bias,
        tied_lm_head=bool(hf_config.tie_word_embeddings),
        rope_type=hf_config.rope_parameters.get("rope_type", "default"),
    )


@torch.no_grad()
def _import_llama_family(state: State, cfg: LlamaConfig, hf_config) -> Llama:
    """Llama-layout tensors into our Llama: q, k, v and gate, up concatenated into packed projections."""
    inv_freq, rope_scale = rope_frequencies(hf_config)
    model = Llama(cfg, inv_freq, rope_scale).eval()
    params = dict(model.named_parameters())
    packed = {"self_attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
              "mlp.gate_up": ("mlp.gate_proj", "mlp.up_proj")}
    names: dict[str, list[str]] = {}  # our parameter -> the checkpoint tensors it concatenates (a tied head: none)
    for ours in params:
        layer, _, rest = ours.partition(".")  # "layers.3", "self_attn.qkv.weight"
        if layer == "lm_head":
            names[ours] = ["lm_head.weight"]
            continue
        if layer == "layers":
            index, _, rest = rest.partition(".")
            layer = f"layers.{index}"
        else:
            layer, rest = "", ours
        module, _, part = rest.rpartition(".")
        names[ours] = [f"model.{layer}.{theirs}.{part}".replace("..", ".") for theirs in packed.get(module, (module,))]
    stale = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(cfg.n_layer)}  # older transformers
    check_keys(state, {n for theirs in names.values() for n in theirs}, {"lm_head.weight", *stale})
    for ours, theirs in names.items():
        _copy(params[ours], torch.cat([state[name] for name in theirs]), " + ".join(theirs))
    return model


def import_llama(state: State, hf_config) -> Llama:
    """`LlamaForCausalLM`: attention_bias puts a bias on q, k, v and o; mlp_bias on the three MLP projections."""
    bias = bool(getattr(hf_config, "attention_bias", False))
    cfg = llama_config(hf_config, qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(hf_config, "mlp_bias", False)))
    return _import_llama_family(state, cfg, hf_config)


def import_qwen2(state: State, hf_config) -> Llama:
    """`Qwen2ForCausalLM`: a Llama with a bias on q, k and v only."""
    return _import_llama_family(state, llama_config(hf_config, qkv_bias=True, o_bias=False, mlp_bias=False), hf_config)


# architecture -> importer; `hf_config.ARCHITECTURES` says which task exports which
IMPORTERS: dict[str, Callable[..., GPT | Llama]] = {
    "GPT2LMHeadModel": import_gpt2,
    "LlamaForCausalLM": import_llama,
    "Qwen2ForCausalLM": import_qwen2,
}


def import_causal_lm(source, gelu: str | None = None) -> tuple[GPT | Llama, torch.nn.Module]:
    """(our decoder, the transformers model to measure it against) from a checkpoint folder or a transformers model.

    A folder's tensors are checked before transformers loads it (`AutoModelForCausalLM`: its own class for the
    architecture), so a refused checkpoint costs no model load. `gelu` overrides a GPT-2's GELU form.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(source, (str, Path)):
        name = architecture(read_hf_config(source, "causal-lm"), "causal-lm")
        hf_config = AutoConfig.from_pretrained(Path(source), local_files_only=True)
        state = read_checkpoint(source)
    else:
        name = architecture({"architectures": [type(source).__name__]}, "causal-lm")
        hf_config, state = source.config, source.state_dict()
    if gelu is not None and name != "GPT2LMHeadModel":
        raise ExportError(f"--gelu applies to GPT-2 checkpoints; a {name}'s MLP is SwiGLU")
    model = IMPORTERS[name](state, hf_config, gelu) if gelu else IMPORTERS[name](state, hf_config)
    if isinstance(source, (str, Path)):
        source = AutoModelForCausalLM.from_pretrained(Path(source), local_files_only=True)
    return model, source.eval()


def special_tokens_from_hf(hf_config) -> dict[str, int]:
    names = {"bos": "bos_token_id", "eos": "eos_token_id", "pad": "pad_token_id"}
    found = {ours: getattr(hf_config, theirs, None) for ours, theirs in names.items()}
    # tiny test configs keep GPT-2's 50256 with a smaller vocabulary: such ids name no token
    return {
        name: int(value)
        for name, value in found.items()
        if isinstance(value, int) and 0 <= value < hf_config.vocab_size
    }
