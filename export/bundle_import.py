"""A GPT bundle's weights read back into the PyTorch model, so that training can go on from a shipped bundle whose
checkpoint was not kept (`train_xiangqi --init runtime/bundles/xiangqi-chars`).

Initializer names cannot be trusted (the exporter stores equal tensors once, under the first one's name), so the
weights are read by structure: the graph's Gather tables, LayerNormalization scales and biases, and MatMul weights
(with the bias added to each output) in graph order are the model's embeddings, norms and linear layers in the
order a forward pass calls them. Counts and shapes must match, a tied head must equal the token embedding, and
every parameter must be filled, or the import refuses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edgeinfer.bundle import Manifest, inside
from edgeinfer.errors import BundleError

from .gpt import GPT, GPTConfig

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


def _modules_in_call_order(model: GPT) -> list[tuple[str, nn.Module]]:
    """The embeddings, norms and linear layers of `model` in the order a forward pass calls them (the graph's order)."""
    names = {module: name for name, module in model.named_modules()}
    calls: list[tuple[str, nn.Module]] = []
    hooks = [module.register_forward_hook(lambda module, *_: calls.append((names[module], module)))
             for module in model.modules() if type(module) in KINDS]
    ids = torch.zeros(1, 2, dtype=torch.long)
    try:
        with torch.no_grad():
            model.training_logits(ids, ids if model.wse is not None else None)
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


def gpt_from_bundle(bundle: Path) -> GPT:
    """The PyTorch GPT whose export is `bundle` (float32, any GPT task), every parameter checked."""
    folder, manifest = Manifest.read(bundle)
    model = GPT(gpt_config_from_manifest(manifest))
    graph = onnx.load(str(inside(folder, "model", manifest["files"]["model"]))).graph
    found = _graph_weights(graph)
    weights: dict[str, np.ndarray | None] = {}
    calls = _modules_in_call_order(model)
    for kind, op in KINDS.items():
        modules = [(name, module) for name, module in calls if type(module) is kind]
        if len(modules) != len(found[op]):
            raise BundleError(f"{bundle}: the graph has {len(found[op])} {op} weights, the manifest's GPT "
                              f"{len(modules)} {kind.__name__} layers")
        for (name, module), arrays in zip(modules, found[op], strict=True):
            params = ("weight",) if kind is nn.Linear and module.bias is None else ("weight", "bias")
            for param, array in zip(params, arrays, strict=False):  # an Embedding has its table only
                weights[f"{name}.{param}"] = array
    if model.cfg.tied_lm_head and not np.array_equal(weights.get("wte.weight"), weights.get("lm_head.weight")):
        raise BundleError(f"{bundle}: the tied LM head's MatMul does not match the token embedding")
    state = model.state_dict()
    missing = sorted(name for name in state if weights.get(name) is None)
    if missing:
        raise BundleError(f"{bundle} does not fit its manifest's GPT: no weights for {missing}")
    for name, tensor in state.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise BundleError(f"{bundle}: {name} is {weights[name].shape} in the graph, "
                              f"the model wants {tuple(tensor.shape)}")
    model.load_state_dict({name: torch.tensor(np.array(weights[name])) for name in state})
    return model
