"""BERT-family encoders on our fused kernels, imported from Hugging Face: extractive QA and masked-LM bundles.

`BertQA` computes what `BertForQuestionAnswering`, `DistilBertForQuestionAnswering` and
`RobertaForQuestionAnswering` compute (post-LN encoder, learned absolute positions, token types where the
architecture has them) and `BertMLM` what `BertForMaskedLM` computes, with `kernels.modules.Gelu` and
`bidirectional_attention`, so the exported graph holds one GELU and one attention node per layer.
`export_bert_qa_bundle` and `export_bert_mlm_bundle` write bundles with parity against transformers measured on
padded batches, refusing to write one over the tolerance.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
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
    warm_up_reference,
)
from .progress import step

DECOMPOSED = ("Softmax", "Erf", "Tanh")
# architecture -> its tokenizer's special tokens (manifest names -> token strings) and the separators it puts
# between a question and a passage: [CLS] q [SEP] p [SEP], or RoBERTa's <s> q </s></s> p </s>
SPECIAL_TOKENS = {
    "bert": {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]"},
    "distilbert": {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]"},
    "roberta": {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "unk": "<unk>", "mask": "<mask>"},
}
SEPARATORS = {"bert": 1, "distilbert": 1, "roberta": 2}


@dataclass
class BertConfig:
    vocab_size: int
    hidden: int
    n_layer: int
    n_head: int
    intermediate: int
    max_positions: int
    type_vocab_size: int = 2  # 0: no token-type embedding (DistilBERT)
    layer_norm_eps: float = 1e-12
    gelu: str = "exact"
    architecture: str = "bert"  # a key of SPECIAL_TOKENS: the tokenizer layout the runtime builds inputs with
    token_types: bool = True  # False: no token_type_ids input; type 0 is added when the embedding exists (RoBERTa)
    padding_idx: int | None = None  # RoBERTa: non-padding tokens take positions padding_idx + 1, + 2, ...

    @property
    def max_length(self) -> int:
        """The longest input the position table covers (RoBERTa's starts past padding_idx)."""
        return self.max_positions - (0 if self.padding_idx is None else self.padding_idx + 1)


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


class BertEncoder(nn.Module):
    """Embeddings and post-LN layers; the task heads subclass it and name their graph outputs in `outputs`."""

    outputs: tuple[str, ...] = ()

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden) if cfg.type_vocab_size else None
        self.emb_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layer))

    @property
    def inputs(self) -> tuple[str, ...]:
        return ("input_ids", "attention_mask", "token_type_ids") if self.cfg.token_types else ("input_ids", "attention_mask")

    def encode(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None) -> Tensor:
        if self.cfg.padding_idx is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        else:  # transformers' create_position_ids_from_input_ids: counted over the ids, not the mask
            real = (input_ids != self.cfg.padding_idx).long()
            positions = torch.cumsum(real, dim=1) * real + self.cfg.padding_idx
        x = self.word(input_ids) + self.position(positions)
        if token_type_ids is not None:
            x = x + self.token_type(token_type_ids)
        elif self.token_type is not None:
            x = x + self.token_type.weight[0]
        x = self.emb_norm(x)
        for layer in self.layers:
            x = layer(x, attention_mask)
        return x


class BertQA(BertEncoder):
    """(input_ids, attention_mask[, token_type_ids]) -> (start_logits, end_logits), each (batch, seq)."""

    outputs = ("start_logits", "end_logits")

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__(cfg)
        self.qa = nn.Linear(cfg.hidden, 2)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        start, end = self.qa(self.encode(input_ids, attention_mask, token_type_ids)).unbind(dim=-1)
        return start, end


class BertMLM(BertEncoder):
    """(input_ids, attention_mask, token_type_ids) -> logits (batch, seq, vocab): BERT's prediction head, its
    decoder tied to the word embeddings."""

    outputs = ("logits",)

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__(cfg)
        self.transform = nn.Linear(cfg.hidden, cfg.hidden)
        self.transform_act = Gelu(cfg.gelu)
        self.transform_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        x = self.encode(input_ids, attention_mask, token_type_ids)
        x = self.transform_norm(self.transform_act(self.transform(x)))
        return x @ self.word.weight.t() + self.bias


# ---------------------------------------------------------------- Hugging Face import
def config_from_hf(hf_config) -> BertConfig:
    """Our config for a BERT, DistilBERT or RoBERTa encoder; anything else (relative positions...) is refused."""
    kind = hf_config.model_type
    distil = kind == "distilbert"
    act = hf_config.activation if distil else hf_config.hidden_act
    problems = []
    if kind not in SPECIAL_TOKENS:
        problems.append(f"model_type {kind!r} (this layout is {', '.join(SPECIAL_TOKENS)}'s)")
    if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type {hf_config.position_embedding_type!r}")
    if getattr(hf_config, "is_decoder", False):
        problems.append("is_decoder")
    if act not in HF_ACTIVATIONS:
        problems.append(f"activation {act!r}")
    if problems:
        raise ExportError(f"unsupported encoder checkpoint: {', '.join(problems)}")
    if distil:  # sinusoidal_pos_embds only initialises the position table, which the checkpoint holds either way
        return BertConfig(vocab_size=hf_config.vocab_size, hidden=hf_config.dim, n_layer=hf_config.n_layers,
                          n_head=hf_config.n_heads, intermediate=hf_config.hidden_dim,
                          max_positions=hf_config.max_position_embeddings, type_vocab_size=0,
                          gelu=HF_ACTIVATIONS[act], architecture=kind, token_types=False)
    roberta = kind == "roberta"
    return BertConfig(
        vocab_size=hf_config.vocab_size,
        hidden=hf_config.hidden_size,
        n_layer=hf_config.num_hidden_layers,
        n_head=hf_config.num_attention_heads,
        intermediate=hf_config.intermediate_size,
        max_positions=hf_config.max_position_embeddings,
        type_vocab_size=hf_config.type_vocab_size,
        layer_norm_eps=hf_config.layer_norm_eps,
        gelu=HF_ACTIVATIONS[act],
        architecture=kind,
        token_types=not roberta,  # RoBERTa's tokenizers make type 0 only
        padding_idx=hf_config.pad_token_id if roberta else None,
    )


# ---------------------------------------------------------------- export
def example_batch(cfg: BertConfig, batch: int, seq: int, seed: int) -> dict[str, Tensor]:
    """Random ids, two token types (where the graph takes them) and right padding of random length (row 0 unpadded)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    lengths[0] = seq
    positions = torch.arange(seq)[None]
    feeds = {"input_ids": torch.randint(0, cfg.vocab_size, (batch, seq), generator=g),
             "attention_mask": (positions < lengths[:, None]).long()}
    if cfg.token_types:
        second = positions >= torch.randint(1, seq + 1, (batch, 1), generator=g)
        feeds["token_type_ids"] = second.long() % cfg.type_vocab_size
    return feeds


def export_onnx(model: BertEncoder, path: Path, attention: str = "contrib") -> onnx.ModelProto:
    """Dynamo-export with dynamic batch and sequence; GELU and attention become one node each per layer."""
    auto = torch.export.Dim.AUTO
    with step("trace and export"):
        program = torch.onnx.export(
            model, (), kwargs=example_batch(model.cfg, 2, 7, seed=0), dynamo=True, opset_version=OPSET,
            dynamic_shapes={name: {0: auto, 1: auto} for name in model.inputs}, input_names=list(model.inputs),
            output_names=list(model.outputs), custom_translation_table=encoder_translation_table(attention),
            optimize=True, verbose=False,
        )
    proto = program.model_proto
    with step("save graph"):
        for value in [*proto.graph.input, *proto.graph.output]:
            for dim, name in zip(value.type.tensor_type.shape.dim, ("batch", "seq")):
                dim.dim_param = name
        onnx.save(proto, str(path))
    return proto


@torch.no_grad()
def measure_parity(path: Path, model: BertEncoder, reference) -> dict[str, float]:
    """Max |output difference| of onnxruntime against `reference` (the transformers model) on padded batches,
    output by output under the same names (start_logits and end_logits, or logits)."""
    session = cpu_session(path)
    worst, largest = 0.0, 0.0
    batches = [example_batch(model.cfg, batch, seq, seed)
               for seed, (batch, seq) in ((1, (3, 11)), (2, (2, min(40, model.cfg.max_length))))]
    warm_up_reference(reference, **batches[0])
    for feeds in batches:
        got = session.run(list(model.outputs), {k: v.numpy() for k, v in feeds.items()})
        out = reference(**feeds)
        real = feeds["attention_mask"].numpy().astype(bool)  # padded positions' logits are meaningless on both sides
        for g, name in zip(got, model.outputs, strict=True):
            w = getattr(out, name).numpy()
            worst = max(worst, float(np.max(np.abs(g - w)[real])))
            largest = max(largest, float(np.max(np.abs(w)[real])))
    return {"max_abs_diff": worst, "reference_abs_max": largest}


ATTENTION_OP = {"standard": "Attention", "contrib": "MultiHeadAttention"}
TASKS = {"qa": "extractive-qa", "masked-lm": "masked-lm"}  # export task -> the bundle manifest's task


def _check_census(census: dict[str, int], n_layer: int, gelus: int, attention: str) -> None:
    expected = {ATTENTION_OP[attention]: n_layer, "Gelu": gelus}
    wrong = {op: census.get(op, 0) for op, count in expected.items() if census.get(op, 0) != count}
    wrong |= {op: census[op] for op in DECOMPOSED if census.get(op)}
    if wrong:
        raise ExportError(f"exported graph is not fused as expected ({expected}, no {DECOMPOSED}): {wrong}")


def _special_tokens(tokenizer: Path | None, cfg: BertConfig, hf_config) -> dict[str, int]:
    found = {}
    if tokenizer is not None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer))
        found = {name: tok.token_to_id(token) for name, token in SPECIAL_TOKENS[cfg.architecture].items()}
    if found.get("pad") is None and isinstance(getattr(hf_config, "pad_token_id", None), int):
        found["pad"] = hf_config.pad_token_id
    return {name: i for name, i in found.items() if i is not None}


def _export_encoder(source, task: str, out_dir: Path, tolerance: float | None, quantize: str, attention: str,
                    task_fields: Callable[[BertEncoder], dict], head_gelus: int = 0) -> Manifest:
    """Import, export, check fusion (one attention and GELU per layer, plus `head_gelus` in the task head) and parity,
    and write the bundle: model.onnx, tokenizer.json and a manifest of the fields every encoder bundle shares plus
    `task_fields(model)`, the task's own block. Returns the manifest."""
    check_quantization(quantize)
    if quantize == "float16":
        raise ExportError("--quantize float16 is for decoders (the KV cache CUDA's GroupQueryAttention keeps); "
                          "encoder bundles take none, int8 or int4")
    if attention not in ATTENTION_OP:
        raise ExportError(f"unknown encoder attention {attention!r}; expected one of {sorted(ATTENTION_OP)}")
    from .hf_import import import_checkpoint  # it imports this module's models
    from .hf_tokenizer import tokenizer_json

    with step("load checkpoint"):
        model, hf_model = import_checkpoint(source, task)
    cfg = model.cfg
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = tokenizer_json(Path(source), Path(tmp)) if isinstance(source, (str, Path)) else None
        onnx_path = Path(tmp) / "model.onnx"
        proto = export_onnx(model, onnx_path, attention)
        _check_census(op_census(proto), cfg.n_layer, cfg.n_layer + head_gelus, attention)
        onnx_path, proto = quantized(onnx_path, proto, quantize)
        census = op_census(proto)
        export_seconds = time.perf_counter() - started
        with step("parity check"):
            parity = check_parity(measure_parity(onnx_path, model, hf_model), quantize, tolerance,
                                  f"transformers {type(hf_model).__name__}")
        with step("write bundle"):
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(str(onnx_path), out_dir / "model.onnx")
            if tokenizer is not None:
                shutil.copyfile(tokenizer, out_dir / "tokenizer.json")
            manifest = Manifest.new(TASKS[task], {
                "files": {"model": "model.onnx", "tokenizer": "tokenizer.json" if tokenizer else None},
                "inputs": [io_spec(v) for v in proto.graph.input],
                "outputs": [io_spec(v) for v in proto.graph.output],
                "special_tokens": _special_tokens(tokenizer, cfg, hf_model.config),
                "model": {**asdict(cfg), "n_parameters": sum(p.numel() for p in model.parameters())},
                "attention": attention,
                "gelu": cfg.gelu,
                "fused_ops": {op: census[op] for op in (ATTENTION_OP[attention], "Gelu") if op in census},
                "op_census": census,
                "quantization": quantization_record(quantize),
                "parity": parity,
                "producer": {"edgeinfer": __version__, "torch": torch.__version__, "onnx_opset": OPSET,
                             "export_seconds": round(export_seconds, 2)},
                "source": {"format": "huggingface", "architecture": type(hf_model).__name__,
                           "path": str(source) if isinstance(source, (str, Path)) else None,
                           "config": json.loads(hf_model.config.to_json_string())},
                **task_fields(model),
            })
            manifest.write(out_dir)
    return manifest


def reader_layout(cfg: BertConfig, max_seq_len: int = 384, stride: int = 128) -> dict[str, int]:
    """How the runtime windows text for a BERT reader of this shape: tokens per window, tokens shared by neighbouring
    windows, the longest question kept and the separators after it (training builds its windows the same way)."""
    window = min(max_seq_len, cfg.max_length)
    separators = SEPARATORS[cfg.architecture]
    return {"window": window, "stride": min(stride, window // 4),
            "max_question_len": min(64, (window - 2 - separators) // 2), "separators": separators}


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
    threshold: float = 0.0,
    null_token: bool = False,
) -> dict:
    """Export a BERT, DistilBERT or RoBERTa QA checkpoint (folder or in-memory model) to an extractive-QA bundle;
    returns the manifest.

    attention "contrib" is onnxruntime's MultiHeadAttention, with its own CPU and CUDA kernels; "standard" is opset-23
    Attention, for any provider. At sequence 384 on this CPU they measured the same (1.83 and 1.81 sequences/s for
    BERT-base, benchmarks/qa_peers.py): the matrix products dominate there. `threshold` is the reader's default span
    probability below which it answers nothing; `null_token` marks a reader trained to point at [CLS] when a window
    holds no answer (the runtime then normalises span probabilities against that token).
    """

    def reader_fields(model: BertEncoder) -> dict:
        return {"reader": "bert", "qa": {
            "unit": "token",
            **reader_layout(model.cfg, max_seq_len, stride),
            "max_answer_len": max_answer_len,
            "threshold": threshold,
            "null_token": null_token,
            "batch_size": 8,
            "batch_tokens": 2048,  # most tokens per session call: see Reader.answer
            "span_score": "start_logit + end_logit (reported as exp of the window's log-softmaxes)",
            "vote": "sum(s^2) / (1 + sum(s))",
        }}

    return _export_encoder(source, "qa", Path(out_dir), tolerance, quantize, attention, reader_fields)


def export_bert_mlm_bundle(source, out_dir: str | Path, *, tolerance: float | None = None, quantize: str = "none",
                           attention: str = "contrib") -> dict:
    """Export a `BertForMaskedLM` (folder or in-memory model) to a masked-LM bundle; returns the manifest.

    The graph returns the vocabulary logits of every position (the prediction head's GELU is fused too); the runtime
    (`edgeinfer.mlm.MaskedLM`) reads [MASK] positions from them.
    """
    return _export_encoder(source, "masked-lm", Path(out_dir), tolerance, quantize, attention, lambda model: {},
                           head_gelus=1)
