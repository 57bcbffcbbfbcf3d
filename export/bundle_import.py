"""A GPT bundle's weights read back into the PyTorch model, so that training can go on from a shipped bundle whose
checkpoint was not kept (`train_xiangqi --init runtime/bundles/xiangqi-chars`, or `--head squares --init
runtime/bundles/xiangqi` for a square-pair bundle: `square_policy_from_bundle`).

Initializer names cannot be trusted (the exporter stores equal tensors once, under the first one's name), so the
weights are read by structure: the graph's Gather tables, LayerNormalization scales and biases, and MatMul weights
(with the bias added to each output) in graph order are the model's embeddings, norms and linear layers in the
order a forward pass calls them. Counts and shapes must match, a tied head must equal the token embedding, and
every parameter must be filled, or the import refuses. A square-pair model's head (q, k: the last two MatMuls, its
pair bias: the graph's one 90 x 90 Add) is read the same way, and the model is then run against the graph itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edgeinfer.bundle import Manifest, inside, square_pair_head
from edgeinfer.errors import BundleError
from edgeinfer.xiangqi.tokens import PROMPT_TOKENS

from .gpt import GPT, GPTConfig
from .xiangqi_policy import SQUARES, SquarePolicy, measure_parity

# the graph ops that hold each kind of module's weights, in the order the model runs them
KINDS = {nn.Embedding: "Gather", nn.LayerNorm: "LayerNormalization", nn.Linear: "MatMul"}


def gpt_config_from_manifest(manifest: dict) -> GPTConfig:
    """The GPTConfig a float32 GPT bundle was exported from (its manifest's `model` block and GELU form)."""
    block = manifest.get("model", {})
    if block.get("architecture") != "gpt":
        raise BundleError(f"only GPT bundles can be read back into PyTorch, this one is {block.get('architecture')!r}")
    if manifest.get("quantization"):
        raise BundleError(f"the bundle's weights are quantized ({manifest['quantization']}); read a float32 bundle")
    return GPTConfig(vocab_size=block["vocab_size"], n_positions=block["max_positions"], n_embd=block["n_embd"],
                     n_layer=block["n_layer"], n_head=block["n_head"], n_segments=block.get("n_segments", 0),
                     pre_ln=block.get("pre_ln", True), tied_lm_head=block.get("tied_lm_head", True),
                     gelu=manifest.get("gelu", "tanh"), attention_kind=block.get("attention_kind", "dot"),
                     bidirectional_prefix=block.get("bidirectional_prefix", 0))


def _modules_in_call_order(model: nn.Module, run: Callable[[], object]) -> list[tuple[str, nn.Module]]:
    """The embeddings, norms and linear layers of `model` in the order `run` (a forward pass) calls them (the
    graph's order)."""
    names = {module: name for name, module in model.named_modules()}
    calls: list[tuple[str, nn.Module]] = []
    hooks = [module.register_forward_hook(lambda module, *_: calls.append((names[module], module)))
             for module in model.modules() if type(module) in KINDS]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _graph_weights(graph: onnx.GraphProto) -> dict[str, list[list[np.ndarray | None]]]:
    """Per op kind, in graph order: each Gather's table, each LayerNormalization's scale and bias, and each
    MatMul's weight (transposed back to PyTorch's layout) with the bias added to its output (None without)."""
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    biases = {name: initializers[other] for node in graph.node if node.op_type == "Add"
              for name in node.input for other in node.input if other != name and other in initializers}
    found: dict[str, list[list[np.ndarray | None]]] = {op: [] for op in KINDS.values()}
    for node in graph.node:
        weight = node.input[1 if node.op_type == "MatMul" else 0] if len(node.input) > 1 else None
        if node.op_type == "Gather" and weight in initializers and initializers[weight].ndim == 2:
            found["Gather"].append([initializers[weight]])
        elif node.op_type == "LayerNormalization":
            found["LayerNormalization"].append([initializers.get(name) for name in node.input[1:3]])
        elif node.op_type == "MatMul" and weight in initializers and initializers[weight].ndim == 2:
            found["MatMul"].append([initializers[weight].T, biases.get(node.output[0])])
    return found


def _load_by_structure(model: nn.Module, gpt: GPT, graph: onnx.GraphProto, bundle: Path,
                       run: Callable[[], object], extra: dict[str, np.ndarray] | None = None) -> None:
    """Fill every parameter of `model` (whose GPT is `gpt`) from `graph`'s weights in `run`'s call order, checked."""
    found = _graph_weights(graph)
    weights: dict[str, np.ndarray | None] = dict(extra or {})
    prefix = next(name for name, module in model.named_modules() if module is gpt)
    prefix = f"{prefix}." if prefix else ""
    calls = _modules_in_call_order(model, run)
    for kind, op in KINDS.items():
        modules = [(name, module) for name, module in calls if type(module) is kind]
        if len(modules) != len(found[op]):
            raise BundleError(f"{bundle}: the graph has {len(found[op])} {op} weights, the manifest's model "
                              f"{len(modules)} {kind.__name__} layers")
        for (name, module), arrays in zip(modules, found[op], strict=True):
            params = ("weight",) if kind is nn.Linear and module.bias is None else ("weight", "bias")
            for param, array in zip(params, arrays, strict=False):  # an Embedding has its table only
                weights[f"{name}.{param}"] = array
    head, embedding = f"{prefix}lm_head.weight", f"{prefix}wte.weight"
    if gpt.cfg.tied_lm_head:
        if head in weights and not np.array_equal(weights.get(embedding), weights[head]):
            raise BundleError(f"{bundle}: the tied LM head's MatMul does not match the token embedding")
        weights.setdefault(head, weights.get(embedding))  # a graph without the LM head still ties it
    state = model.state_dict()
    missing = sorted(name for name in state if weights.get(name) is None)
    if missing:
        raise BundleError(f"{bundle} does not fit its manifest's model: no weights for {missing}")
    for name, tensor in state.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise BundleError(f"{bundle}: {name} is {weights[name].shape} in the graph, "
                              f"the model wants {tuple(tensor.shape)}")
    model.load_state_dict({name: torch.tensor(np.array(weights[name])) for name in state})


def gpt_from_bundle(bundle: Path) -> GPT:
    """The PyTorch GPT whose export is `bundle` (float32, any GPT task), every parameter checked."""
    folder, manifest = Manifest.read(bundle)
    if square_pair_head(manifest):
        raise BundleError(f"{bundle} is a square-pair bundle: read it with square_policy_from_bundle")
    model = GPT(gpt_config_from_manifest(manifest))
    graph = onnx.load(str(inside(folder, "model", manifest["files"]["model"]))).graph
    ids = torch.zeros(1, 2, dtype=torch.long)
    _load_by_structure(model, model, graph, bundle, lambda: model.training_logits(ids, ids if model.wse is not None else None))
    return model


def square_policy_from_bundle(bundle: Path, tolerance: float = 1e-3) -> SquarePolicy:
    """The PyTorch square-pair model whose export is `bundle`, every parameter checked and its move logits compared
    with the graph's on random prompts (refused beyond `tolerance` times the logits' largest magnitude)."""
    folder, manifest = Manifest.read(bundle)
    if not square_pair_head(manifest):
        raise BundleError(f"{bundle} is not a square-pair bundle: read it with gpt_from_bundle")
    path = inside(folder, "model", manifest["files"]["model"])
    graph = onnx.load(str(path)).graph
    inputs = {value.name for value in graph.input}
    initializers = {i.name: i for i in graph.initializer}
    # the position table keeps a row for each token of a training example (prompt and move), more than the graph reads
    tables = [numpy_helper.to_array(initializers[node.input[0]]) for node in graph.node if node.op_type == "Gather"
              and node.input[0] in initializers and node.input[1] not in inputs]
    pair_bias = [numpy_helper.to_array(initializers[name]) for node in graph.node if node.op_type == "Add"
                 for name in node.input if name in initializers and initializers[name].dims == [SQUARES, SQUARES]]
    if len(tables) != 1 or len(pair_bias) != 1:
        raise BundleError(f"{bundle}: expected one position table and one {SQUARES} x {SQUARES} pair bias in the "
                          f"graph, found {len(tables)} and {len(pair_bias)}")
    cfg = dataclasses.replace(gpt_config_from_manifest(manifest), n_positions=len(tables[0]))
    model = SquarePolicy(GPT(cfg), manifest["model"]["move_head"]["dim"])
    ids = torch.zeros(1, PROMPT_TOKENS, dtype=torch.long)
    _load_by_structure(model, model.gpt, graph, bundle, lambda: model(ids, ids if cfg.n_segments else None),
                       {"pair_bias": pair_bias[0]})
    parity = measure_parity(path, model.eval())
    if parity["max_abs_diff"] > tolerance * max(1.0, parity["reference_abs_max"]):
        raise BundleError(f"{bundle}: the weights read back give move logits {parity['max_abs_diff']:.2e} away from "
                          "the graph's")
    return model
