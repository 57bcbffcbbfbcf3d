"""Import Hugging Face checkpoints into our models: one function per architecture (`IMPORTERS`).

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

from .bert import BertEncoder, BertMLM, BertQA, config_from_hf
from .gpt import GPT, GPTConfig
from .hf_config import HF_ACTIVATIONS, architecture, read_hf_config
from .llama import Llama, LlamaConfig
from .onnx_export import ExportError

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
            try:
                state.update(load(folder / file))
            except Exception as exc:  # safetensors and torch raise several types for a file they cannot read
                raise InputError(f"{folder / file} is not a readable checkpoint file: "
                                 f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}"
                                 ) from exc
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


@torch.no_grad()
def load_checked(model: torch.nn.Module, state: State, modules: dict[str, tuple[str, ...]],
                 optional: set[str] = frozenset()) -> None:
    """Copy a checkpoint into `model`, our module by our module: `modules` maps each of ours to the checkpoint
    modules whose weights (and biases) it holds, concatenated along the output axis when several (packed
    projections). The checkpoint must hold exactly those tensors, plus any of `optional`."""
    params = dict(model.named_parameters())  # a tied head shares the embedding's tensor and is listed once
    names = {}
    for ours in params:
        module, _, part = ours.rpartition(".")
        names[ours] = [f"{theirs}.{part}" for theirs in modules[module]]
    check_keys(state, {name for theirs in names.values() for name in theirs}, optional)
    for ours, theirs in names.items():
        tensor = torch.cat([state[name] for name in theirs])
        if params[ours].shape != tensor.shape:
            raise ExportError(f"checkpoint tensor {' + '.join(theirs)} has shape {tuple(tensor.shape)}; its config "
                              f"makes it {tuple(params[ours].shape)}")
        params[ours].copy_(tensor)


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
        if activation not in HF_ACTIVATIONS:
            raise ExportError(f"unsupported activation {activation!r}; known: {sorted(HF_ACTIVATIONS)}")
        gelu = HF_ACTIVATIONS[activation]
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


def import_gpt2(state: State, hf_config, gelu: str | None = None) -> GPT:
    """Our GPT from a `GPT2LMHeadModel` state dict (GPT-2's Conv1D stores weights as (in, out))."""
    model = GPT(gpt2_config(hf_config, gelu)).eval()
    # the original OpenAI checkpoints lack the "transformer." prefix and keep the causal mask as a tensor
    p = "transformer." if any(key.startswith("transformer.") for key in state) else ""
    modules = {"wte": (f"{p}wte",), "wpe": (f"{p}wpe",), "ln_f": (f"{p}ln_f",), "lm_head": ("lm_head",)}
    for i in range(model.cfg.n_layer):
        for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2"), ("attn.qkv", "attn.c_attn"),
                             ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            modules[f"blocks.{i}.{ours}"] = (f"{p}h.{i}.{theirs}",)
    conv1d = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
    state = {name: tensor.t() if name.endswith(conv1d) else tensor for name, tensor in state.items()}
    masks = {f"{p}h.{i}.attn.{b}" for i in range(model.cfg.n_layer) for b in ("bias", "masked_bias")}
    load_checked(model, state, modules, {"lm_head.weight", *masks})
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


def _import_llama_family(state: State, cfg: LlamaConfig, hf_config) -> Llama:
    """Llama-layout tensors into our Llama: q, k, v and gate, up concatenated into packed projections."""
    model = Llama(cfg, *rope_frequencies(hf_config)).eval()
    modules = {"embed_tokens": ("model.embed_tokens",), "norm": ("model.norm",), "lm_head": ("lm_head",)}
    for i in range(cfg.n_layer):
        ours, theirs = f"layers.{i}", f"model.layers.{i}"
        modules |= {
            f"{ours}.input_layernorm": (f"{theirs}.input_layernorm",),
            f"{ours}.self_attn.qkv": tuple(f"{theirs}.self_attn.{x}_proj" for x in "qkv"),
            f"{ours}.self_attn.o_proj": (f"{theirs}.self_attn.o_proj",),
            f"{ours}.post_attention_layernorm": (f"{theirs}.post_attention_layernorm",),
            f"{ours}.mlp.gate_up": (f"{theirs}.mlp.gate_proj", f"{theirs}.mlp.up_proj"),
            f"{ours}.mlp.down_proj": (f"{theirs}.mlp.down_proj",),
        }
    stale = {f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(cfg.n_layer)}  # older transformers
    load_checked(model, state, modules, {"lm_head.weight", *stale})
    return model


def import_llama(state: State, hf_config) -> Llama:
    """`LlamaForCausalLM`: attention_bias puts a bias on q, k, v and o; mlp_bias on the three MLP projections."""
    bias = bool(getattr(hf_config, "attention_bias", False))
    cfg = llama_config(hf_config, qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(hf_config, "mlp_bias", False)))
    return _import_llama_family(state, cfg, hf_config)


def import_qwen2(state: State, hf_config) -> Llama:
    """`Qwen2ForCausalLM`: a Llama with a bias on q, k and v only."""
    return _import_llama_family(state, llama_config(hf_config, qkv_bias=True, o_bias=False, mlp_bias=False), hf_config)


# ---------------------------------------------------------------- BERT family
# our encoder layer's modules -> the checkpoint's, per layout
BERT_LAYER = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
              "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
              "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm"}
DISTILBERT_LAYER = {"query": "attention.q_lin", "key": "attention.k_lin", "value": "attention.v_lin",
                    "attn_out": "attention.out_lin", "attn_norm": "sa_layer_norm", "ffn_in": "ffn.lin1",
                    "ffn_out": "ffn.lin2", "ffn_norm": "output_layer_norm"}


def _encoder_modules(model: BertEncoder, prefix: str, layers: str, layer: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """Our encoder's modules -> the checkpoint's: embeddings under `prefix`.embeddings, layer i under
    `prefix`.`layers`.i with its modules named by `layer`."""
    emb = f"{prefix}.embeddings"
    modules = {"word": (f"{emb}.word_embeddings",), "position": (f"{emb}.position_embeddings",),
               "emb_norm": (f"{emb}.LayerNorm",)}
    if model.token_type is not None:
        modules["token_type"] = (f"{emb}.token_type_embeddings",)
    for i in range(model.cfg.n_layer):
        modules |= {f"layers.{i}.{ours}": (f"{prefix}.{layers}.{i}.{theirs}",) for ours, theirs in layer.items()}
    return modules


def _buffers(prefix: str) -> set[str]:
    """Buffers older transformers saved with the embeddings, and the pooler a task head leaves unused."""
    return {f"{prefix}.embeddings.position_ids", f"{prefix}.embeddings.token_type_ids",
            f"{prefix}.pooler.dense.weight", f"{prefix}.pooler.dense.bias"}


def _import_qa(state: State, hf_config, prefix: str, layers: str, layer: dict[str, str]) -> BertQA:
    model = BertQA(config_from_hf(hf_config)).eval()
    modules = _encoder_modules(model, prefix, layers, layer) | {"qa": ("qa_outputs",)}
    load_checked(model, state, modules, _buffers(prefix))
    return model


def import_bert_qa(state: State, hf_config) -> BertQA:
    """Our BertQA from a `BertForQuestionAnswering` state dict."""
    return _import_qa(state, hf_config, "bert", "encoder.layer", BERT_LAYER)


def import_roberta_qa(state: State, hf_config) -> BertQA:
    """`RobertaForQuestionAnswering`: BERT's tensors under "roberta.", positions offset past padding_idx."""
    return _import_qa(state, hf_config, "roberta", "encoder.layer", BERT_LAYER)


def import_distilbert_qa(state: State, hf_config) -> BertQA:
    """`DistilBertForQuestionAnswering`: no token types, its own layer names (the position table, sinusoidal or
    learned, is a checkpoint tensor either way)."""
    return _import_qa(state, hf_config, "distilbert", "transformer.layer", DISTILBERT_LAYER)


def import_bert_mlm(state: State, hf_config) -> BertMLM:
    """`BertForMaskedLM`: the encoder and its prediction head, whose decoder is the word embeddings (tied)."""
    if not getattr(hf_config, "tie_word_embeddings", True):
        raise ExportError("an untied masked-LM decoder (tie_word_embeddings=False) is not supported")
    model = BertMLM(config_from_hf(hf_config)).eval()
    modules = _encoder_modules(model, "bert", "encoder.layer", BERT_LAYER) | {
        "transform": ("cls.predictions.transform.dense",),
        "transform_norm": ("cls.predictions.transform.LayerNorm",),
        "": ("cls.predictions",),  # the output bias
    }
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}  # copies of the embeddings and bias
    load_checked(model, state, modules, _buffers("bert") | tied)
    return model


# architecture -> importer; `hf_config.ARCHITECTURES` says which task exports which
IMPORTERS: dict[str, Callable[..., torch.nn.Module]] = {
    "GPT2LMHeadModel": import_gpt2,
    "LlamaForCausalLM": import_llama,
    "Qwen2ForCausalLM": import_qwen2,
    "BertForQuestionAnswering": import_bert_qa,
    "DistilBertForQuestionAnswering": import_distilbert_qa,
    "RobertaForQuestionAnswering": import_roberta_qa,
    "BertForMaskedLM": import_bert_mlm,
}
# task -> the transformers class that loads the reference model (which resolves to the architecture's own class)
AUTO_CLASSES = {"causal-lm": "AutoModelForCausalLM", "qa": "AutoModelForQuestionAnswering",
                "masked-lm": "AutoModelForMaskedLM"}


def import_checkpoint(source, task: str, gelu: str | None = None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(our model, the transformers model to measure it against) from a checkpoint folder or a transformers model.

    A folder's tensors are checked before transformers loads it (by `AUTO_CLASSES[task]`, its own class for the
    architecture), so a refused checkpoint costs no model load; both models are float32 (checkpoints often ship
    bfloat16), since parity is measured in float32. `gelu` overrides a GPT-2's GELU form.
    """
    import transformers

    if isinstance(source, (str, Path)):
        name = architecture(read_hf_config(source, task), task)
        try:
            hf_config = transformers.AutoConfig.from_pretrained(Path(source), local_files_only=True)
        except Exception as exc:  # config parsing raises many types (huggingface_hub's validation errors among them)
            raise InputError(f"transformers cannot read {Path(source) / 'config.json'}: {exc}") from exc
        state = read_checkpoint(source)
    else:
        name = architecture({"architectures": [type(source).__name__]}, task)
        if source.dtype != torch.float32:
            raise ExportError(f"the model is {source.dtype}; export measures parity in float32: pass model.float()")
        hf_config, state = source.config, source.state_dict()
    if gelu is not None and name != "GPT2LMHeadModel":
        raise ExportError(f"--gelu applies to GPT-2 checkpoints, not to a {name}")
    model = IMPORTERS[name](state, hf_config, gelu) if gelu else IMPORTERS[name](state, hf_config)
    if isinstance(source, (str, Path)):
        source = getattr(transformers, AUTO_CLASSES[task]).from_pretrained(Path(source), local_files_only=True,
                                                                           dtype=torch.float32)
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


def stop_tokens_from_hf(hf_model) -> list[int]:
    """The ids that end a generation, as transformers' `generate` reads them: generation_config's eos ids (an instruct
    model lists its end of turn there too), else the config's; ids outside the vocabulary are dropped."""
    eos = getattr(hf_model.generation_config, "eos_token_id", None)
    eos = hf_model.config.eos_token_id if eos is None else eos
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    return [int(i) for i in ids if isinstance(i, int) and 0 <= i < hf_model.config.vocab_size]
