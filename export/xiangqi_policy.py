"""The Xiangqi move GPT with a head over square pairs: one forward call of the position's prompt scores every move.

The trunk is `gpt.GPT` reading the board prompt (`edgeinfer.xiangqi.tokens`) both ways; the head scores a move from
square f to square t as q(h_f) . k(h_t) / sqrt(d) + pair_bias[f, t], over the trunk's final states h of the 90 square
tokens (q, k: n_embd -> d). Training takes the softmax over all 8,100 square pairs, or over the legal moves as the
runtime does (`edgeinfer.xiangqi.mover`). Against the 4-character head this needs no tree of candidate moves beside the
prompt (91 tokens a call instead of ~130 at ply 80) and, trained from that head's trunk, agrees with the engine more
often (benchmarks/README.md).

The bundle's graph: input_ids (batch, 91) and, when the trunk reads square features, token_type_ids (batch, 91) ->
move_logits (batch, 90, 90), squares numbered rank * 9 + file as the side to move sees the board. Export checks the
graph against this module as `onnx_export` does a decoder's.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from edgeinfer import __version__
from edgeinfer.bundle import Manifest
from edgeinfer.kernels.onnx_emit import translation_table
from edgeinfer.xiangqi.tables import FILES, RANKS
from edgeinfer.xiangqi.tokens import MIRRORED_SQUARE, PROMPT_TOKENS, TOKEN_ID

from .gpt import GPT
from .onnx_export import (
    FUSED_OP_TYPES,
    OPSET,
    check_parity,
    cpu_session,
    io_spec,
    name_dims,
    op_census,
    warm_up_reference,
)
from .progress import step

SQUARES = FILES * RANKS
HEAD_DIM = 64
# a position's legal moves as square pairs, padded to MAX_LEGAL with NO_MOVE (a position with more would make a ragged
# array and fail the position cache's build, not pass unnoticed), and each pair's index under the left-right mirror
MAX_LEGAL, NO_MOVE = 128, SQUARES * SQUARES
MIRRORED_PAIR = np.array([MIRRORED_SQUARE[pair // SQUARES] * SQUARES + MIRRORED_SQUARE[pair % SQUARES]
                          for pair in range(NO_MOVE)] + [NO_MOVE], dtype=np.uint16)
# a move's 4 characters (file, rank, file, rank) as token ids, less these, are its squares' file and rank
FILE_0, RANK_0 = TOKEN_ID["a"], TOKEN_ID["0"]


def move_squares(characters: torch.Tensor) -> torch.Tensor:
    """(batch, 4) move character ids -> (batch,) index of the move's square pair, from * 90 + to."""
    files, ranks = characters[:, 0::2] - FILE_0, characters[:, 1::2] - RANK_0
    squares = ranks * FILES + files
    return squares[:, 0] * SQUARES + squares[:, 1]


class SquarePolicy(nn.Module):
    """A GPT trunk over the board prompt and the square-pair head."""

    HEAD_PARAMETERS = ("q.", "k.", "pair_bias")  # name prefixes of the head's parameters (its own learning rate)

    def __init__(self, gpt: GPT, head_dim: int = HEAD_DIM) -> None:
        super().__init__()
        self.gpt, self.cfg = gpt, gpt.cfg
        self.q = nn.Linear(gpt.cfg.n_embd, head_dim)
        self.k = nn.Linear(gpt.cfg.n_embd, head_dim)
        self.pair_bias = nn.Parameter(torch.zeros(SQUARES, SQUARES))
        self.scale = 1 / math.sqrt(head_dim)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, 91) prompts -> (batch, 90, 90) logits of from-square x to-square."""
        batch, seq = input_ids.shape
        positions = torch.arange(seq, device=input_ids.device).expand(batch, seq)
        every_key = torch.ones(batch, seq, seq, dtype=torch.int64, device=input_ids.device)  # the prompt read both ways
        x = self.gpt.embed(input_ids, positions, token_type_ids)
        empty = [torch.zeros(batch, self.cfg.n_head, 0, self.cfg.head_dim, device=input_ids.device)] * 2
        for block in self.gpt.blocks:
            x, _ = block(x, empty, every_key)
        h = self.gpt.ln_f(x)[:, 1:]  # the 90 squares' states, the start token left out
        return self.q(h) @ self.k(h).transpose(1, 2) * self.scale + self.pair_bias

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor, token_type_ids=None,
             legal: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of the move whose characters follow each example's prompt (`train_xiangqi.collate`'s
        examples; `targets` only says where they are, as for the character head): over all 8,100 square pairs, or,
        given `legal` (batch, MAX_LEGAL) square pairs padded with NO_MOVE, over those moves only, as the runtime
        scores them."""
        del targets
        prompt_types = None if token_type_ids is None else token_type_ids[:, :PROMPT_TOKENS]
        logits = self(input_ids[:, :PROMPT_TOKENS], prompt_types).flatten(1)
        labels = move_squares(input_ids[:, PROMPT_TOKENS:PROMPT_TOKENS + 4])
        if legal is None:
            return F.cross_entropy(logits, labels)
        padded = F.pad(logits.float(), (0, 1), value=float("-inf"))  # NO_MOVE's logit: adds nothing to the sum
        return (torch.logsumexp(padded.gather(1, legal), 1) - padded.gather(1, labels[:, None])[:, 0]).mean()

    def manifest_fields(self) -> dict:
        fields = self.gpt.manifest_fields()
        model = {key: value for key, value in fields["model"].items()
                 if key not in ("tied_lm_head", "bidirectional_prefix")}
        return {**fields, "model": {**model, "max_positions": PROMPT_TOKENS,
                                    "move_head": {"kind": "square_pairs", "dim": self.q.out_features}}}


def _example_inputs(model: SquarePolicy, batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = {"input_ids": torch.randint(0, model.cfg.vocab_size, (batch, PROMPT_TOKENS), generator=g)}
    if model.cfg.n_segments:
        inputs["token_type_ids"] = torch.randint(0, model.cfg.n_segments, (batch, PROMPT_TOKENS), generator=g)
    return inputs


def export_onnx(model: SquarePolicy, path: Path) -> onnx.ModelProto:
    """Dynamo-export `model` to `path` with fused attention and GELU; the batch axis is dynamic."""
    example = _example_inputs(model, 2, 0)
    with step("trace and export"):
        program = torch.onnx.export(
            model.eval(), (), kwargs=example, dynamo=True, opset_version=OPSET,
            dynamic_shapes={name: {0: torch.export.Dim.AUTO} for name in example},
            input_names=list(example), output_names=["move_logits"],
            custom_translation_table=translation_table("standard", "query_key"), optimize=True, verbose=False)
    proto = program.model_proto
    without_cache(proto)
    dims = {"input_ids": ["batch", PROMPT_TOKENS], "token_type_ids": ["batch", PROMPT_TOKENS],
            "move_logits": ["batch", SQUARES, SQUARES]}
    for value in [*proto.graph.input, *proto.graph.output]:  # readable dim names, not the exporter's s0, s1
        name_dims(value, dims[value.name])
    with step("save graph"):
        onnx.save(proto, str(path))
    return proto


def without_cache(proto: onnx.ModelProto) -> None:
    """Drop the attention nodes' empty past inputs (their present outputs are unused and pruned), then the nodes that
    made them. onnxruntime's CPU Attention refuses a past without a present (1.32: on a batch of one)."""
    for node in proto.graph.node:
        if node.op_type == "Attention" and len(node.output) < 2:
            del node.input[4:]
    needed = {value.name for value in proto.graph.output}
    kept = []
    for node in reversed(proto.graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(kept))


def measure_parity(onnx_path: Path, model: SquarePolicy, seed: int = 0) -> dict[str, float]:
    """Max |logit difference| of onnxruntime against the PyTorch module on a batch of random prompts."""
    inputs = _example_inputs(model, 3, seed)
    session = cpu_session(onnx_path)
    out = session.run(None, {name: t.numpy() for name, t in inputs.items()})[0]
    one = {name: t[:1].numpy() for name, t in inputs.items()}  # a batch of one, as a move is chosen
    out_one = session.run(None, one)[0]
    warm_up_reference(model, **inputs)
    with torch.no_grad():
        reference = model(**inputs).numpy()
    error = max(np.max(np.abs(out - reference)), np.max(np.abs(out_one - reference[:1])))
    return {"max_abs_diff": float(error), "reference_abs_max": float(np.abs(reference).max())}


def export_policy_bundle(model: SquarePolicy, out_dir: str | Path, *, tokenizer_file: str | Path | None = None,
                         tolerance: float | None = None, extra: dict | None = None) -> dict:
    """Export, check parity, and write a task "xiangqi" bundle whose move head is the square pairs. Returns the
    manifest."""
    model, out_dir = model.eval(), Path(out_dir)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        proto = export_onnx(model, onnx_path)
        export_seconds = time.perf_counter() - started
        with step("parity check"):
            parity = check_parity(measure_parity(onnx_path, model), "none", tolerance,
                                  "edgeinfer SquarePolicy (PyTorch eager)")
        with step("write bundle"):
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(str(onnx_path), out_dir / "model.onnx")
            if tokenizer_file is not None:
                shutil.copyfile(tokenizer_file, out_dir / "tokenizer.json")
            census = op_census(proto)
            manifest = Manifest.new("xiangqi", {
                "files": {"model": "model.onnx", "tokenizer": "tokenizer.json" if tokenizer_file else None},
                "inputs": [io_spec(v) for v in proto.graph.input],
                "outputs": [io_spec(v) for v in proto.graph.output],
                **model.manifest_fields(),
                "attention": "standard",
                "fused_ops": {op: n for op, n in census.items() if op in FUSED_OP_TYPES},
                "op_census": census,
                "special_tokens": {},
                "parity": parity,
                "producer": {"edgeinfer": __version__, "torch": torch.__version__, "onnx_opset": OPSET,
                             "export_seconds": round(export_seconds, 2)},
                **(extra or {}),
            })
            manifest.write(out_dir)
    return manifest
