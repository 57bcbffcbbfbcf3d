"""Export a decoder to a bundle: dynamo ONNX export with fused ops, parity check against PyTorch, manifest.

A decoder is any module with `export.gpt.GPT`'s forward signature, `cfg` (n_layer, n_kv_head, head_dim,
vocab_size, n_positions, n_segments), `training_logits` and `manifest_fields`: the GPT and the Llama family.
A GPT with synthesizer attention (`cfg.attention_kind`) exports its scores as plain ops over a concatenated cache
(the standard target's layout); the dense and random kinds cache values only, and the manifest's
`kv_cache.past_key` and `present_key` are null.

Export refuses to write a bundle whose parity error (max |logit difference| against the reference
PyTorch model, prefill and a cached decode step) exceeds the tolerance.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch

from edgeinfer import __version__
from edgeinfer.bundle import Manifest
from edgeinfer.errors import EdgeInferError
from edgeinfer.kernels.contrib_fusion import fuse_contrib
from edgeinfer.kernels.onnx_emit import ATTENTION_TARGETS, MASK_KINDS, translation_table
from edgeinfer.lm.step import query_key_mask

from .gpt import GPT
from .llama import Llama
from .progress import step
from .quantize import QUANTIZATIONS, RECORDS, quantize_weights

OPSET = 23
FUSED_OP_TYPES = ("Attention", "GroupQueryAttention", "RotaryEmbedding", "RMSNormalization", "Gelu", "QuickGelu")
DECOMPOSED_OP_TYPES = ("Erf", "Tanh", "Softmax")


Decoder = GPT | Llama


class ExportError(EdgeInferError):
    """The model cannot be exported as asked."""


class ParityError(ExportError):
    """The exported graph does not compute what the PyTorch model computes."""


class _Flat(torch.nn.Module):
    """The decoder with flat, named graph inputs and outputs."""

    def __init__(self, model: Decoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attention_mask, logits_positions, past, token_type_ids=None):
        logits, presents = self.model(input_ids, position_ids, attention_mask, logits_positions, past, token_type_ids)
        return (logits, *presents)


def cache_parts(model: Decoder) -> tuple[str, ...]:
    """What each layer caches: ("key", "value"), or ("value",) for attention whose scores read no keys."""
    return getattr(model.cfg, "cache_parts", ("key", "value"))


def synthesized(model: Decoder) -> bool:
    """Whether the model's attention scores are synthesized (export/synthesizer.py) rather than dot products only."""
    return getattr(model.cfg, "attention_kind", "dot") != "dot"


def io_names(n_layer: int, segments: bool, parts: tuple[str, ...] = ("key", "value")) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in parts]
    present = [f"present.{i}.{kv}" for i in range(n_layer) for kv in parts]
    inputs = ["input_ids", "position_ids", "attention_mask", "logits_positions", *past]
    return inputs + (["token_type_ids"] if segments else []), ["logits", *present]


def _example_inputs(model: Decoder, batch: int, seq: int, past_len: int, seed: int = 0, mask: str = "key") -> dict:
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    total = past_len + seq
    inputs = {
        "input_ids": torch.randint(0, cfg.vocab_size, (batch, seq), generator=g),
        "position_ids": torch.arange(past_len, total).expand(batch, seq).contiguous(),
        "attention_mask": torch.ones(batch, total, dtype=torch.int64),
        "logits_positions": torch.arange(seq).expand(batch, seq).contiguous(),
        "past": [torch.randn(batch, cfg.n_kv_head, past_len, cfg.head_dim, generator=g)
                 for _ in range(len(cache_parts(model)) * cfg.n_layer)],
    }
    if cfg.n_segments:
        inputs["token_type_ids"] = torch.randint(0, cfg.n_segments, (batch, seq), generator=g)
    if mask == "query_key":
        prefix = getattr(cfg, "bidirectional_prefix", 0)
        inputs["attention_mask"] = torch.from_numpy(query_key_mask(inputs["attention_mask"].numpy(), seq, prefix))
    return inputs


def name_dims(value: onnx.ValueInfoProto, names: list[str | int]) -> None:
    """Set a graph input's or output's shape: a name for each dynamic axis, a number for each fixed one."""
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for name in names:
        dim = shape.dim.add()
        if isinstance(name, int):
            dim.dim_value = name
        else:
            dim.dim_param = name


def _symbolic_io(proto: onnx.ModelProto, cfg, attention: str, mask: str) -> None:
    """Give graph inputs/outputs readable dim names; the exporter's own symbols (s0, s1...) say nothing."""
    cache_len = "cache_len" if attention == "contrib" else "past_len"
    present_len = "cache_len" if attention == "contrib" else "total_len"
    dims = {
        "input_ids": ["batch", "seq"],
        "position_ids": ["batch", "seq"],
        "token_type_ids": ["batch", "seq"],
        "attention_mask": ["batch", "seq", "total_len"] if mask == "query_key" else ["batch", "total_len"],
        "logits_positions": ["batch", "n_logits"],
        "logits": ["batch", "n_logits", cfg.vocab_size],
    }
    for value in [*proto.graph.input, *proto.graph.output]:
        if value.name.startswith("past_key_values."):
            names = ["batch", cfg.n_kv_head, cache_len, cfg.head_dim]
        elif value.name.startswith("present."):
            names = ["batch", cfg.n_kv_head, present_len, cfg.head_dim]
        else:
            names = dims[value.name]
        name_dims(value, names)
    if attention == "contrib":
        # In-place caches make present as long as the bound buffer; stale inferred shapes would mislead.
        del proto.graph.value_info[:]


def op_census(proto: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in proto.graph.node).items()))


def cpu_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def warm_up_reference(reference: Callable[..., object], *args, **kwargs) -> None:
    """Call a PyTorch reference once and drop what it returns. Its first forward in a process can differ from every
    later one (a tiny GPT-2 here: 2.8e-4 on logits of 6.7 in 2 of 8 fresh processes, identical after that), which made
    the 1e-4 parity check fail at random; the measured calls come after this one."""
    with torch.no_grad():
        reference(*args, **kwargs)


def _feeds(inputs: dict, session) -> dict[str, np.ndarray]:
    flat = [inputs["input_ids"], inputs["position_ids"], inputs["attention_mask"], inputs["logits_positions"]]
    flat += inputs["past"]
    if "token_type_ids" in inputs:
        flat.append(inputs["token_type_ids"])
    # a float16 graph takes its KV cache in float16
    return {i.name: t.numpy().astype(np.float16) if i.type == "tensor(float16)" else t.numpy()
            for i, t in zip(session.get_inputs(), flat)}


def measure_parity(
    onnx_path: Path,
    model: Decoder,
    reference: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    attention: str,
    seed: int = 0,
    mask: str = "key",
) -> dict[str, float]:
    """Max |logit diff| of onnxruntime against `reference` (full-sequence logits) for a prompt and a cached step."""
    session = cpu_session(onnx_path)
    cfg = model.cfg
    batch, prompt_len = 2, max(7, getattr(cfg, "bidirectional_prefix", 0))  # a bidirectional prefix is fed whole
    prompt = _example_inputs(model, batch, prompt_len, 0, seed, mask)
    # contrib graphs decode into a preallocated buffer; standard ones take a past of exactly past_len
    if attention == "contrib":
        cache = prompt_len + 1
        prompt["past"] = [torch.zeros(batch, cfg.n_kv_head, cache, cfg.head_dim) for _ in prompt["past"]]
    out = session.run(None, _feeds(prompt, session))
    warm_up_reference(reference, prompt["input_ids"], prompt.get("token_type_ids"))
    with torch.no_grad():
        ref_prompt = reference(prompt["input_ids"], prompt.get("token_type_ids")).numpy()
    prefill = float(np.max(np.abs(out[0] - ref_prompt)))

    step = _example_inputs(model, batch, 1, prompt_len, seed + 1, mask)
    step["past"] = [torch.from_numpy(t) for t in out[1:]]
    out_step = session.run(None, _feeds(step, session))
    full_ids = torch.cat([prompt["input_ids"], step["input_ids"]], dim=1)
    full_types = None
    if cfg.n_segments:
        full_types = torch.cat([prompt["token_type_ids"], step["token_type_ids"]], dim=1)
    with torch.no_grad():
        ref_step = reference(full_ids, full_types)[:, -1:].numpy()
    cached = float(np.max(np.abs(out_step[0] - ref_step)))
    return {"prefill_max_abs_diff": prefill, "cached_step_max_abs_diff": cached, "max_abs_diff": max(prefill, cached),
            "reference_abs_max": float(max(np.abs(ref_prompt).max(), np.abs(ref_step).max()))}


# int8: a trained 4x128 Xiangqi GPT measures 0.058, GPT-2-small-shaped random weights 0.05; int4: the Xiangqi GPT
# measures 0.13 (median of 20 held-out games, worst 0.20) against the fp32 bundle; float16: the chat bundle 4.5e-4
DEFAULT_TOLERANCE = {"none": 1e-4, "int8": 0.1, "int4": 0.25, "float16": 0.01}


def check_parity(parity: dict, quantize: str, tolerance: float | None, reference_name: str) -> dict:
    """Refuse a graph that strays from the reference: fp32 graphs by an absolute logit error, quantized ones by the error
    relative to the largest reference logit (quantization error scales with the logits). Returns the parity record."""
    tolerance = DEFAULT_TOLERANCE[quantize] if tolerance is None else tolerance
    relative = quantize != "none"
    error = parity["max_abs_diff"] / parity["reference_abs_max"] if relative else parity["max_abs_diff"]
    kind = "relative to max |reference logit|" if relative else "absolute"
    if not error <= tolerance:
        raise ParityError(
            f"exported graph differs from {reference_name} by {parity['max_abs_diff']:.3g} ({kind} error {error:.3g}),"
            f" over the tolerance {tolerance:g} by {error - tolerance:.3g}; no bundle written"
        )
    return {**parity, "tolerance": tolerance, "tolerance_kind": kind, "reference": reference_name}


def check_quantization(quantize: str) -> None:
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantize!r}; expected one of {QUANTIZATIONS}")


def quantization_record(quantize: str) -> dict | None:
    return RECORDS.get(quantize)


def quantized(onnx_path: Path, proto: onnx.ModelProto, quantize: str) -> tuple[Path, onnx.ModelProto]:
    """The graph to ship and its proto: `onnx_path` itself, or a quantized copy beside it."""
    if quantize == "none":
        return onnx_path, proto
    out = onnx_path.with_name(f"model.{quantize}.onnx")
    with step(f"quantize {quantize}"):
        quantize_weights(onnx_path, out, quantize)
        return out, onnx.load(str(out), load_external_data=False)


def contrib_head_multiple(model: Decoder) -> int:
    """What GroupQueryAttention's head size must be a multiple of: 16 with its built-in rotary (onnxruntime 1.32 CPU)."""
    return 16 if isinstance(model, Llama) else 8


def export_onnx(model: Decoder, path: Path, attention: str, mask: str = "key") -> onnx.ModelProto:
    """Dynamo-export `model` to `path` (dynamic batch, sequence and past axes) with fused ops.

    mask "query_key" makes attention_mask (batch, seq, total), given whole by the runtime (standard target only).
    """
    if attention not in ATTENTION_TARGETS:
        raise ExportError(f"unknown attention target {attention!r}; expected one of {ATTENTION_TARGETS}")
    if mask not in MASK_KINDS or (mask == "query_key" and attention != "standard"):
        raise ExportError(f"attention mask {mask!r} is not available with attention {attention!r}; "
                          f"expected one of {MASK_KINDS}, query_key with the standard target only")
    cfg = model.cfg
    if synthesized(model) and (attention == "contrib" or mask != "key"):
        raise ExportError(f"synthesizer attention ({cfg.attention_kind}) exports with attention 'standard' or "
                          "'unfused' and a key mask: its scores are plain ops over a concatenated cache")
    if getattr(cfg, "bidirectional_prefix", 0) and mask != "query_key":
        raise ExportError(f"model.bidirectional_prefix is {cfg.bidirectional_prefix}: a prefix LM needs attention_mask "
                          "'query_key' (the graph must take the whole mask)")
    if attention == "contrib" and cfg.head_dim % contrib_head_multiple(model):
        raise ExportError(
            f"the contrib target (GroupQueryAttention) needs a head size that is a multiple of "
            f"{contrib_head_multiple(model)}; this model's is "
            f"{cfg.head_dim}: export with attention 'standard'"
        )
    example = _example_inputs(model, batch=2, seq=3, past_len=4, mask=mask)
    input_names, output_names = io_names(cfg.n_layer, bool(cfg.n_segments), cache_parts(model))
    auto = torch.export.Dim.AUTO
    dynamic = {
        "input_ids": {0: auto, 1: auto},
        "position_ids": {0: auto, 1: auto},
        "attention_mask": {0: auto, 1: auto, 2: auto} if mask == "query_key" else {0: auto, 1: auto},
        "logits_positions": {0: auto, 1: auto},
        "past": [{0: auto, 2: auto} for _ in example["past"]],
    }
    if cfg.n_segments:
        dynamic["token_type_ids"] = {0: auto, 1: auto}
    with step("trace and export"):
        program = torch.onnx.export(
            _Flat(model).eval(),
            (),
            kwargs=example,
            dynamo=True,
            opset_version=OPSET,
            dynamic_shapes=dynamic,
            input_names=input_names,
            output_names=output_names,
            custom_translation_table=translation_table(attention, mask),
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    if attention == "contrib":
        with step("fuse"):
            fuse_contrib(proto)
    with step("save graph"):
        _symbolic_io(proto, cfg, attention, mask)
        onnx.save(proto, str(path))
    return proto


def export_gpt_bundle(
    model: Decoder,
    out_dir: str | Path,
    *,
    attention: str = "auto",
    task: str = "causal-lm",
    reference: Callable | None = None,
    reference_name: str | None = None,
    tokenizer_file: str | Path | None = None,
    other_files: dict[str, Path] | None = None,
    special_tokens: dict[str, int] | None = None,
    generation: dict | None = None,
    tolerance: float | None = None,
    quantize: str = "none",
    attention_mask: str = "key",
    extra: dict | None = None,
) -> dict:
    """Export, check parity, and write the bundle folder. Returns the manifest.

    attention_mask="query_key": the graph takes the full (batch, seq, total) mask instead of a key mask, so a caller
    can score a tree of continuations in one call (Xiangqi move scoring); standard attention only.

    other_files (manifest role -> file) are copied into the bundle under their own names (a CPM checkpoint's
    spiece.model). quantize="int8" or "int4" ships quantized weights, "float16" a half-precision graph for CUDA
    (export/quantize.py); tolerance defaults per quantization (DEFAULT_TOLERANCE).

    attention="auto" picks "contrib" (in-place cache, the faster per decode step in benchmarks/decode_step.py)
    when the head size allows it, else "standard" (always for synthesizer attention).
    """
    model = model.eval()
    cfg = model.cfg
    check_quantization(quantize)
    if attention == "auto":
        attention = "standard" if cfg.head_dim % contrib_head_multiple(model) or synthesized(model) else "contrib"
    out_dir = Path(out_dir)
    if reference is None:
        reference_name = f"edgeinfer {type(model).__name__} (PyTorch eager)"

        def reference(ids, types):
            return model.training_logits(ids, types)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        onnx_path, proto = quantized(onnx_path, export_onnx(model, onnx_path, attention, attention_mask), quantize)
        export_seconds = time.perf_counter() - started
        with step("parity check"):
            parity = check_parity(measure_parity(onnx_path, model, reference, attention, mask=attention_mask),
                                  quantize, tolerance, reference_name)
        with step("write bundle"):
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(str(onnx_path), out_dir / "model.onnx")
            if tokenizer_file is not None:
                shutil.copyfile(tokenizer_file, out_dir / "tokenizer.json")
            for source in (other_files or {}).values():
                shutil.copyfile(source, out_dir / source.name)
            census = op_census(proto)
            fields = model.manifest_fields()
            parts = cache_parts(model)
            input_names, output_names = io_names(cfg.n_layer, bool(cfg.n_segments), parts)
            cached_keys = "key" in parts
            manifest = Manifest.new(task, {
                "files": {"model": "model.onnx", "tokenizer": "tokenizer.json" if tokenizer_file else None,
                          **{role: source.name for role, source in (other_files or {}).items()}},
                "inputs": [io_spec(v) for v in proto.graph.input],
                "outputs": [io_spec(v) for v in proto.graph.output],
                **fields,
                "model": {**fields["model"], "n_parameters": sum(p.numel() for p in model.parameters())},
                "attention": attention,
                "attention_mask": attention_mask,
                "kv_cache": {
                    "layout": "shared_buffer" if attention == "contrib" else "concat",
                    "padding_side": "right" if attention == "contrib" else "left",
                    "dims": ["batch", "heads", "length", "head_dim"],
                    "past_key": "past_key_values.{layer}.key" if cached_keys else None,
                    "past_value": "past_key_values.{layer}.value",
                    "present_key": "present.{layer}.key" if cached_keys else None,
                    "present_value": "present.{layer}.value",
                },
                "fused_ops": {op: n for op, n in census.items() if op in FUSED_OP_TYPES},
                "op_census": census,
                "special_tokens": special_tokens or {},
                "generation": generation or {},
                "quantization": quantization_record(quantize),
                "parity": parity,
                "producer": {
                    "edgeinfer": __version__,
                    "torch": torch.__version__,
                    "onnx_opset": OPSET,
                    "export_seconds": round(export_seconds, 2),
                },
                **(extra or {}),
            })
            assert [v["name"] for v in manifest["inputs"]] == input_names
            assert [v["name"] for v in manifest["outputs"]] == output_names
            manifest.write(out_dir)
    return manifest


def io_spec(value: onnx.ValueInfoProto) -> dict:
    tensor = value.type.tensor_type
    dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": dims}
