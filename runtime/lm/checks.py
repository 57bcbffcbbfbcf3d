"""A decoder bundle's manifest numbers checked against its graph at load.

A wrong `n_head` (`n_kv_head`), `head_dim`, `vocab_size`, `max_positions` or `n_segments` would otherwise load and then fail
inside onnxruntime at the first step (or, for a position table smaller than `max_positions`, only once a long
sequence reaches it). The static shapes the graph declares are compared first, so the error names the field;
then one probe step at the last position, with the last token and segment ids, proves the tables are as large
as the manifest says (a one-token step: a millisecond on the shipped bundles, 20 ms on GPT-2-small, so a probe passed
before on the same manifest and graph file is not run again: `local_cache.passed_before`).
"""

from __future__ import annotations

import json

import numpy as np

from ..bundle import first_line
from ..errors import BundleError
from ..local_cache import file_identity, passed_before, remember_pass
from ..session import onnxruntime
from .cache import KVCache
from .step import Step

FED = ("input_ids", "position_ids", "attention_mask", "logits_positions")


def check_decoder_graph(model) -> None:
    """Raise BundleError unless the manifest's model numbers agree with the graph of `model` (a CausalLM)."""
    inputs = {value.name: value.shape for value in model.session.get_inputs()}
    outputs = {value.name: value.shape for value in model.session.get_outputs()}
    wanted = [*FED, *(["token_type_ids"] if model.uses_segments else [])]
    missing = [name for name in wanted if name not in inputs] + (["logits"] if "logits" not in outputs else [])
    if missing:
        raise BundleError(f"the graph lacks {missing[0]!r}, which the runtime feeds or reads"
                          + (" (manifest model.n_segments says it takes segments)" if missing[0] == "token_type_ids"
                             else ""))
    if not model.uses_segments and "token_type_ids" in inputs:
        raise BundleError("the graph takes token_type_ids but manifest model.n_segments is 0 or absent")
    _expect(outputs["logits"], -1, model.vocab_size, "vocab_size", "logits")
    for name in model.past_names:
        if len(inputs[name]) != 4:
            raise BundleError(f"cache input {name!r} has shape {inputs[name]}; kv_cache.dims are 4 axes")
        _expect(inputs[name], 1, model.n_kv_head, "n_kv_head" if "n_kv_head" in model.manifest["model"] else "n_head",
                name)
        _expect(inputs[name], 3, model.head_dim, "head_dim", name)
    key = json.dumps([model.manifest, file_identity(model.folder / model.manifest["files"]["model"]), onnxruntime().__version__], sort_keys=True)
    if not passed_before("probes", key):  # the probe's outcome follows from the manifest and the graph's bytes
        _probe(model)
        remember_pass("probes", key)


def _expect(shape: list, axis: int, value: int, field: str, name: str) -> None:
    if isinstance(shape[axis], int) and shape[axis] != value:
        raise BundleError(f"manifest model.{field} is {value} but the graph's {name!r} has {shape[axis]} there")


def _probe(model) -> None:
    cache = KVCache(model, 1, 1)
    last = np.full((1, 1), model.max_positions - 1, dtype=np.int64)
    types = np.full((1, 1), model.manifest["model"]["n_segments"] - 1, np.int64) if model.uses_segments else None
    one = np.ones(1, dtype=np.int64)
    try:
        Step(model, cache).run(np.full((1, 1), model.vocab_size - 1), last, cache.step_mask(one),
                               np.zeros((1, 1), np.int64), types, kept=one)
    except Exception as exc:  # onnxruntime raises several unrelated types; all mean the numbers are wrong
        raise BundleError(f"the graph fails a one-token step at position model.max_positions - 1 = "
                          f"{model.max_positions - 1} with token model.vocab_size - 1 = {model.vocab_size - 1}"
                          f"{' and the last segment id' if model.uses_segments else ''}: {first_line(exc)}") from exc
