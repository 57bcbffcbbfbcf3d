"""Fuzzed bundles: any field of a manifest dropped or replaced, any file truncated, flipped or extended.

`edgeinfer.load` must either refuse the bundle (BundleError or InputError) or give a model whose task's front door
answers one small request; nothing else (no other exception, no crash). Each case runs with the digests the
manifest records and with digests recorded again after the change, so the checks behind the digest are reached.
The bundles are the tiny exported GPT-2 (both attention targets) and the shipped chat, qa and Xiangqi bundles.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fuzzing import PROFILES, fuzz, json_junk
from hypothesis import strategies as st

import edgeinfer
from edgeinfer.bundle import KV_LAYOUTS, MANIFEST_FILE, TASKS, sha256_of
from edgeinfer.chat import Chat
from edgeinfer.errors import BundleError, InputError
from edgeinfer.loader import BUNDLES
from edgeinfer.xiangqi import Board
from edgeinfer.xiangqi.mover import MoveModel

TARGETS = ["standard", "contrib", "chat", "qa", "xiangqi", "xiangqi-chars"]
# recorded for people (tensor shapes too): the runtime never reads them
NOISE = {"op_census", "metrics", "producer", "training", "shape", "dims"}
# fields some manifests lack that the runtime reads when present
ABSENT = [("session",), ("session", "threads"), ("session", "disabled_optimizers"), ("session", "provider_options"),
          ("attention_mask",), ("model", "n_segments"), ("model", "n_kv_head"), ("model", "type_vocab_size"),
          ("qa", "batch_tokens"), ("qa", "threshold"), ("generation", "max_new_tokens"), ("generation", "top_k"),
          ("generation", "stop_token_ids"), ("special_tokens", "eos"), ("files", "tokenizer"), ("files", "extra")]
# words a manifest uses, so an edit can swap one meaningful value for another
WORDS = [*TASKS, *KV_LAYOUTS, "query_key", "key", "dgcnn", "bert", "standard", "contrib", MANIFEST_FILE,
         "model.onnx", "tokenizer.json", "vocab.json", "past_key_values.{layer}.value", "present.{layer}.key",
         "logits", "input_ids", "float16", "int64"]
DROP = "<drop>"  # an edit that removes the field
DAMAGE = ["truncate", "flip", "append", "splice"]


class Workspace:
    """A private copy of a bundle whose files each example rewrites and then restores (copying per example is slow)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.original = {path.name: path.read_bytes() for path in folder.iterdir()}
        self.manifest = json.loads(self.original[MANIFEST_FILE])

    @contextmanager
    def rewritten(self, files: dict[str, bytes]) -> Iterator[Path]:
        try:
            for name, data in files.items():
                (self.folder / name).write_bytes(data)
            yield self.folder
        finally:
            for name in files:
                (self.folder / name).write_bytes(self.original[name])


@pytest.fixture(scope="module", params=TARGETS)
def workspace(request, gpt2_bundles, tmp_path_factory) -> Workspace:
    source = gpt2_bundles.get(request.param) or BUNDLES / request.param
    folder = tmp_path_factory.mktemp(request.param) / "bundle"
    shutil.copytree(source, folder)
    return Workspace(folder)


def use(model) -> None:
    """One small request through the front door of the model's task, with the bundle's own default options."""
    task = model.manifest["task"]
    if task == "extractive-qa":
        [answers] = model.answer(["谁写了静夜思"], context=["《静夜思》是李白写的诗。"])
        assert all(0 <= a.start <= a.end for a in answers)
    elif task == "xiangqi":
        try:
            mover = MoveModel(model)
        except BundleError:  # MoveModel's own check of the bundle (the board prompt and its vocabulary)
            return
        assert mover.best(Board()).move in Board().legal_moves()
    elif task == "masked-lm":
        [logits] = model.logits([[1, 2]])
        assert logits.shape[0] == 2
    elif task == "chat":
        try:
            chat = Chat(model, seed=0)
        except BundleError:  # Chat's own check of the bundle (a tokenizer, segments), before any decoding
            return
        assert isinstance(chat.reply("你好"), str)
    else:
        [result] = model.generate([[1]], seed=0)  # one token: the smallest model it may hold
        assert all(0 <= t < model.vocab_size for t in result.token_ids)


def load_and_use(folder: Path) -> None:
    """The property: refused at load with a BundleError/InputError, or loaded and answering."""
    try:
        model = edgeinfer.load(folder, device="cpu")
    except (BundleError, InputError):
        return
    use(model)


def paths(node, prefix: tuple = ()) -> list[tuple]:
    """Every field and list item of a manifest, as key paths (the fields recorded only for people left out)."""
    found = [prefix] if prefix else []
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        if key not in NOISE:
            found += paths(child, (*prefix, key))
    return found


def nearby(value) -> list:
    """Values close to a field's own: off by one, doubled, negated, shortened, retyped."""
    if isinstance(value, bool):
        return [not value, int(value)]
    if isinstance(value, int):
        return [value - 1, value + 1, 2 * value, -value, value * 10**6, float(value), str(value)]
    if isinstance(value, float):
        return [-value, value * 1e300, int(value), str(value)]
    if isinstance(value, str):
        return [value + "x", value.upper(), value[:-1], [value]]
    if isinstance(value, list):
        return [value[:-1], value * 2, value[::-1], {}]
    if isinstance(value, dict):
        return [{}, [value], list(value)]
    return [0]


def lookup(data, path: tuple):
    for key in path:
        if isinstance(data, dict) and key in data or isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return None
    return data


@st.composite
def manifest_edits(draw, manifest: dict) -> list[tuple[tuple, object]]:
    """One to three edits (key path, new value or DROP) of a manifest, anywhere in it."""
    where = paths(manifest)
    where += [path for path in ABSENT if path not in where]
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(where))
        value = draw(st.one_of(st.just(DROP), json_junk(), st.sampled_from(WORDS),
                               st.sampled_from(nearby(lookup(manifest, path)))))
        edits.append((path, value))
    return edits


def edited(manifest: dict, edits: list[tuple[tuple, object]]) -> dict:
    data = copy.deepcopy(manifest)
    for path, value in edits:
        *parents, last = path
        node = lookup(data, tuple(parents))
        if isinstance(node, dict):
            if value is DROP:
                node.pop(last, None)
            else:
                node[last] = value
        elif isinstance(node, list) and isinstance(last, int) and last < len(node):
            if value is DROP:
                del node[last]
            else:
                node[last] = value
    return data


def record_digests(folder: Path, data: dict) -> None:
    """Record the sha256 of each file the manifest names that the folder holds, as an export would."""
    files = data.get("files")
    if isinstance(files, dict):
        present = {path.name for path in folder.iterdir()}
        data["sha256"] = {name: sha256_of(folder / name) for name in files.values()
                          if isinstance(name, str) and name in present}


@PROFILES
def test_edited_manifests_load_or_are_refused(workspace, scale):
    @fuzz(40 * scale, manifest_edits(workspace.manifest), st.booleans())
    def check(edits, rehash):
        data = edited(workspace.manifest, edits)
        if rehash:
            record_digests(workspace.folder, data)
        with workspace.rewritten({MANIFEST_FILE: json.dumps(data).encode()}):
            load_and_use(workspace.folder)

    check()


@st.composite
def damaged_file(draw, original: dict[str, bytes]) -> tuple[str, bytes]:
    """(file name, new bytes): one file of the bundle truncated, a byte flipped, bytes appended or overwritten.

    Positions favour both ends of a file, where ONNX and JSON keep their structure, over the weights between.
    """
    name = draw(st.sampled_from(sorted(original)))
    data = bytearray(original[name])
    end = len(data) - 1
    at = draw(st.one_of(st.integers(0, min(end, 4095)), st.integers(max(0, end - 4095), end), st.integers(0, end)))
    how = draw(st.sampled_from(DAMAGE))
    if how == "truncate":
        del data[at:]
    elif how == "flip":
        data[at] ^= draw(st.integers(1, 255))
    elif how == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    else:
        piece = draw(st.binary(min_size=1, max_size=16))
        data[at : at + len(piece)] = piece
    return name, bytes(data)


@PROFILES
def test_damaged_files_load_or_are_refused(workspace, scale):
    @fuzz(24 * scale, damaged_file(workspace.original), st.booleans())
    def check(damage, rehash):
        name, data = damage
        files = {name: data}
        if rehash and name != MANIFEST_FILE:
            manifest = copy.deepcopy(workspace.manifest)
            manifest["sha256"][name] = hashlib.sha256(data).hexdigest()
            files[MANIFEST_FILE] = json.dumps(manifest).encode()
        with workspace.rewritten(files):
            load_and_use(workspace.folder)

    check()


@pytest.mark.parametrize(("name", "path", "value", "message"), [
    ("chat", ("generation", "do_sample"), None, "default decoding options .* do_sample must be true or false"),
    ("xiangqi-chars", ("special_tokens", "eos"), "x", "default decoding options .* stop token 'x'"),
    ("chat", ("model", "max_positions"), 2**63 + 5, "'model.max_positions' must be at most 9223372036854775807"),
    ("chat", ("model", "n_segments"), 2**70, "'model.n_segments' must be at most"),
    ("xiangqi-chars", ("model", "max_positions"), 1, "model.max_positions is 1: a decoder needs 2 or more"),
    ("xiangqi-chars", ("model", "bidirectional_prefix"), 96, "'model.bidirectional_prefix' must be at most 95"),
    ("xiangqi-chars", ("model", "bidirectional_prefix"), "91", "'model.bidirectional_prefix' must be an integer >= 0"),
    ("chat", ("model", "bidirectional_prefix"), 3, "bidirectional_prefix needs attention_mask 'query_key'"),
    ("chat", ("session",), {"threads": 2**70}, "'session.threads' must be at most 1024"),
    ("chat", ("session",), {"allow_spinning": 1}, "'session.allow_spinning' must be bool, got 1"),
    ("chat", ("session",), {"threads": True}, "'session.threads' must be int, got True"),
    ("chat", ("session",), {"provider_options": {"CPUExecutionProvider": 5}},
     "'session.provider_options.CPUExecutionProvider' must be an object"),
    ("qa", ("qa", "window"), 2 * 10**8, "'qa.window' must be at most 65536"),
    ("qa", ("model",), [1], "'model' must be dict"),
    ("qa", ("qa", "threshold"), math.nan, "'qa.threshold' must be a number"),
])
def test_manifest_fuzz_findings_are_refused_at_load(tmp_path, name, path, value, message):
    """Each loaded before (and then failed every call, raised a TypeError/OverflowError, or allocated gigabytes)."""
    folder = tmp_path / name
    shutil.copytree(BUNDLES / name, folder)
    data = edited(json.loads((folder / MANIFEST_FILE).read_text()), [(path, value)])
    (folder / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        edgeinfer.load(folder, device="cpu")


def test_thread_counts_beyond_any_machine_are_refused(monkeypatch):
    """A thread count that onnxruntime's settings cannot hold raised a TypeError from its bindings."""
    with pytest.raises(InputError, match="threads must be an integer from 0"):
        edgeinfer.load(BUNDLES / "xiangqi", device="cpu", threads=2**70)
    monkeypatch.setenv("EDGEINFER_THREADS", str(2**70))
    with pytest.raises(InputError, match="EDGEINFER_THREADS must be at most 1024"):
        edgeinfer.load(BUNDLES / "xiangqi", device="cpu")


def test_spinning_follows_the_caller_then_the_environment_then_the_manifest(monkeypatch, tmp_path):
    def spinning(model) -> str:
        return model.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    folder = tmp_path / "xiangqi"
    shutil.copytree(BUNDLES / "xiangqi", folder)
    data = json.loads((folder / MANIFEST_FILE).read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps({**data, "session": {**data.get("session", {}), "allow_spinning": False}}))
    monkeypatch.delenv("EDGEINFER_ALLOW_SPINNING", raising=False)
    assert spinning(edgeinfer.load(folder, device="cpu")) == "0"
    monkeypatch.setenv("EDGEINFER_ALLOW_SPINNING", "1")
    assert spinning(edgeinfer.load(folder, device="cpu")) == "1"
    assert spinning(edgeinfer.load(folder, device="cpu", allow_spinning=False)) == "0"
    with pytest.raises(InputError, match="allow_spinning must be True, False or None, got 'no'"):
        edgeinfer.load(folder, device="cpu", allow_spinning="no")
    monkeypatch.setenv("EDGEINFER_ALLOW_SPINNING", "yes")
    with pytest.raises(InputError, match="EDGEINFER_ALLOW_SPINNING must be 0 or 1, got 'yes'"):
        edgeinfer.load(folder, device="cpu")
