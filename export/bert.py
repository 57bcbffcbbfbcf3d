"""BERT-style extractive readers: an encoder + QA head on our fused kernels, imported from Hugging Face.

`BertQA` computes what `BertForQuestionAnswering` computes (post-LN encoder, absolute positions, token
types) with `kernels.modules.Gelu` and `bidirectional_attention`, so the exported graph holds one GELU
and one opset-23 `Attention` node per layer. `export_bert_qa_bundle` writes an extractive-QA bundle with
parity against transformers measured on padded batches, refusing to write one over the tolerance.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from edgeinfer import __version__
from edgeinfer.bundle import Manifest
from edgeinfer.kernels.modules import Gelu, bidirectional_attention
from edgeinfer.kernels.onnx_emit import encoder_translation_table

from .hf_config import HF_ACTIVATIONS
from .onnx_export import (
    OPSET,
    ExportError,
    check_parity,
    check_quantization,
    cpu_session,
    io_spec,
    op_census,
    quantization_record,
    quantized,
)

INPUTS = ("input_ids", "token_type_ids", "attention_mask")
OUTPUTS = ("start_logits", "end_logits")
DECOMPOSED = ("Softmax", "Erf", "Tanh")


@dataclass
class BertConfig:
    vocab_size: int
    hidden: int
    n_layer: int
    n_head: int
    intermediate: int
    max_positions: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    gelu: str = "exact"


class EncoderLayer(nn.Module):
    """Post-LN block: x = LN(x + attn(x)); x = LN(x + W2 gelu(W1 x))."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        h = cfg.hidden
        self.n_head = cfg.n_head
        self.query, self.key, self.value, self.attn_out = (nn.Linear(h, h) for _ in range(4))
        self.attn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(h, cfg.intermediate)
        self.act = Gelu(cfg.gelu)
        self.ffn_out = nn.Linear(cfg.intermediate, h)
        self.ffn_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, attention_mask: Tensor) -> Tensor:
        a = bidirectional_attention(self.query(x), self.key(x), self.value(x), attention_mask, self.n_head)
        x = self.attn_norm(x + self.attn_out(a))
        return self.ffn_norm(x + self.ffn_out(self.act(self.ffn_in(x))))


class BertQA(nn.Module):
    """(input_ids, token_type_ids, attention_mask) -> (start_logits, end_logits), each (batch, seq)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden)
        self.emb_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layer))
        self.qa = nn.Linear(cfg.hidden, 2)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        x = self.emb_norm(self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids))
        for layer in self.layers:
            x = layer(x, attention_mask)
        start, end = self.qa(x).unbind(dim=-1)
        return start, end


# ---------------------------------------------------------------- Hugging Face import
def config_from_hf(hf_config) -> BertConfig:
    """Our config for a BERT-layout encoder; other layouts (RoBERTa's offset positions...) are refused."""
    problems = []
    if hf_config.model_type != "bert":
        problems.append(f"model_type {hf_config.model_type!r} (only 'bert' has this layout)")
    if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type {hf_config.position_embedding_type!r}")
    if getattr(hf_config, "is_decoder", False):
        problems.append("is_decoder")
    if hf_config.hidden_act not in HF_ACTIVATIONS:
        problems.append(f"activation {hf_config.hidden_act!r}")
    if problems:
        raise ExportError(f"unsupported encoder QA checkpoint: {', '.join(problems)}")
    return BertConfig(
        vocab_size=hf_config.vocab_size,
        hidden=hf_config.hidden_size,
        n_layer=hf_config.num_hidden_layers,
        n_head=hf_config.num_attention_heads,
        intermediate=hf_config.intermediate_size,
        max_positions=hf_config.max_position_embeddings,
        type_vocab_size=hf_config.type_vocab_size,
        layer_norm_eps=hf_config.layer_norm_eps,
        gelu=HF_ACTIVATIONS[hf_config.hidden_act],
    )


# ---------------------------------------------------------------- export
def example_batch(cfg: BertConfig, batch: int, seq: int, seed: int) -> dict[str, Tensor]:
    """Random ids, two token types and right padding of random length (row 0 unpadded)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    positions = torch.arange(seq)[None]
    return {
        "input_ids": torch.randint(0, cfg.vocab_size, (batch, seq), generator=g),
        "token_type_ids": (positions >= torch.randint(1, seq + 1, (batch, 1), generator=g)).long() % cfg.type_vocab_size,
        "attention_mask": (positions < lengths[:, None]).long(),
    }


def export_onnx(model: BertQA, path: Path, attention: str = "contrib") -> onnx.ModelProto:
    """Dynamo-export with dynamic batch and sequence; GELU and attention become one node each per layer."""
    auto = torch.export.Dim.AUTO
    program = torch.onnx.export(
        model, (), kwargs=example_batch(model.cfg, 2, 7, seed=0), dynamo=True, opset_version=OPSET,
        dynamic_shapes={name: {0: auto, 1: auto} for name in INPUTS}, input_names=list(INPUTS),
        output_names=list(OUTPUTS), custom_translation_table=encoder_translation_table(attention), optimize=True, verbose=False,
    )
    proto = program.model_proto
    for value in [*proto.graph.input, *proto.graph.output]:
        for dim, name in zip(value.type.tensor_type.shape.dim, ("batch", "seq"), strict=True):
            dim.dim_param = name
    onnx.save(proto, str(path))
    return proto


@torch.no_grad()
def measure_parity(path: Path, model: BertQA, reference) -> dict[str, float]:
    """Max |logit difference| of onnxruntime against `reference` (a transformers QA model) on padded batches."""
    session = cpu_session(path)
    worst, largest = 0.0, 0.0
    for seed, (batch, seq) in ((1, (3, 11)), (2, (2, min(40, model.cfg.max_positions)))):
        feeds = example_batch(model.cfg, batch, seq, seed)
        got = session.run(list(OUTPUTS), {k: v.numpy() for k, v in feeds.items()})
        out = reference(**feeds)
        for g, w, mask in ((got[0], out.start_logits, feeds["attention_mask"]), (got[1], out.end_logits, feeds["attention_mask"])):
            real = mask.numpy().astype(bool)  # padded positions' logits are meaningless on both sides
            worst = max(worst, float(np.max(np.abs(g - w.numpy())[real])))
            largest = max(largest, float(np.max(np.abs(w.numpy())[real])))
    return {"max_abs_diff": worst, "reference_abs_max": largest}


ATTENTION_OP = {"standard": "Attention", "contrib": "MultiHeadAttention"}


def _check_census(census: dict[str, int], n_layer: int, attention: str) -> None:
    fused = (ATTENTION_OP[attention], "Gelu")
    wrong = {op: census.get(op, 0) for op in fused if census.get(op, 0) != n_layer}
    wrong |= {op: census[op] for op in DECOMPOSED if census.get(op)}
    if wrong:
        raise ExportError(f"exported graph is not fused as expected ({n_layer} {' and '.join(fused)}, no {DECOMPOSED}): {wrong}")


def _special_tokens(tokenizer: Path | None, hf_config) -> dict[str, int]:
    found = {}
    if tokenizer is not None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer))
        found = {name: tok.token_to_id(f"[{name.upper()}]") for name in ("cls", "sep", "pad", "unk", "mask")}
    if found.get("pad") is None and isinstance(getattr(hf_config, "pad_token_id", None), int):
        found["pad"] = hf_config.pad_token_id
    return {name: i for name, i in found.items() if i is not None}


def export_bert_qa_bundle(
    source,
    out_dir: str | Path,
    *,
    tolerance: float | None = None,
    quantize: str = "none",
    attention: str = "contrib",
    max_seq_len: int = 384,
    stride: int = 128,
    max_answer_len: int = 30,
) -> dict:
    """Export a BertForQuestionAnswering (folder or in-memory model) to an extractive-QA bundle; returns the manifest.

    attention "contrib" is onnxruntime's MultiHeadAttention, with its own CPU and CUDA kernels; "standard" is opset-23
    Attention, for any provider. At sequence 384 on this CPU they measured the same (1.83 and 1.81 sequences/s for
    BERT-base, benchmarks/qa_peers.py): the matrix products dominate there.
    """
    check_quantization(quantize)
    if attention not in ATTENTION_OP:
        raise ExportError(f"unknown encoder attention {attention!r}; expected one of {sorted(ATTENTION_OP)}")
    from .hf_import import import_checkpoint  # it imports this module's BertQA

    model, hf_model = import_checkpoint(source, "qa")
    cfg = model.cfg
    out_dir = Path(out_dir)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        _check_census(op_census(export_onnx(model, onnx_path, attention)), cfg.n_layer, attention)
        onnx_path = quantized(onnx_path, quantize)
        proto = onnx.load(str(onnx_path), load_external_data=False)
        census = op_census(proto)
        export_seconds = time.perf_counter() - started
        parity = check_parity(measure_parity(onnx_path, model, hf_model), quantize, tolerance,
                              f"transformers {type(hf_model).__name__}")
        out_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(onnx_path), out_dir / "model.onnx")
    tokenizer = Path(source) / "tokenizer.json" if isinstance(source, (str, Path)) else None
    tokenizer = tokenizer if tokenizer is not None and tokenizer.is_file() else None
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out_dir / "tokenizer.json")
    window = min(max_seq_len, cfg.max_positions)
    manifest = Manifest.new("extractive-qa", {
        "reader": "bert",
        "files": {"model": "model.onnx", "tokenizer": "tokenizer.json" if tokenizer else None},
        "inputs": [io_spec(v) for v in proto.graph.input],
        "outputs": [io_spec(v) for v in proto.graph.output],
        "special_tokens": _special_tokens(tokenizer, hf_model.config),
        "qa": {
            "unit": "token",
            "window": window,
            "stride": min(stride, window // 4),
            "max_answer_len": max_answer_len,
            "max_question_len": min(64, (window - 3) // 2),
            "threshold": 0.0,
            "batch_size": 8,
            "batch_tokens": 2048,  # most tokens per session call: see Reader.answer
            "span_score": "start_logit + end_logit (reported as exp of the window's log-softmaxes)",
            "vote": "sum(s^2) / (1 + sum(s))",
        },
        "model": {"architecture": "bert", **asdict(cfg), "n_parameters": sum(p.numel() for p in model.parameters())},
        "attention": attention,
        "gelu": cfg.gelu,
        "fused_ops": {op: census[op] for op in (ATTENTION_OP[attention], "Gelu") if op in census},
        "op_census": census,
        "quantization": quantization_record(quantize),
        "parity": parity,
        "producer": {"edgeinfer": __version__, "torch": torch.__version__, "onnx_opset": OPSET, "export_seconds": round(export_seconds, 2)},
        "source": {"format": "huggingface", "path": str(source) if isinstance(source, (str, Path)) else None,
                   "config": json.loads(hf_model.config.to_json_string())},
    })
    manifest.write(out_dir)
    return manifest
