"""Hostile and broken bundles: files confined to the folder, digests, manifest numbers against the graph.

Each case is refused at load with a BundleError naming what is wrong, never a raw onnxruntime error later.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import edgeinfer
from edgeinfer.bundle import Manifest
from edgeinfer.errors import BundleError

SHIPPED = Path(edgeinfer.__file__).parent / "bundles"


@pytest.fixture
def gpt(gpt2_bundles, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(gpt2_bundles["standard"], copy)
    return copy


def _shipped(name: str, tmp_path: Path) -> Path:
    copy = tmp_path / name
    shutil.copytree(SHIPPED / name, copy)
    return copy


def _edit(bundle: Path, edit, rehash: bool = False) -> None:
    """Edit the manifest; with `rehash`, record the files' digests again (as an export would)."""
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    if rehash:
        Manifest(data).write(bundle)
    else:
        path.write_text(json.dumps(data))


def _files(**names):
    return lambda m: m["files"].update(names)


# ---------------------------------------------------------------- confinement
@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.onnx", "sub/../../outside.onnx", "..\\outside.onnx",
                                  "C:\\model.onnx", "", "model.onnx\x00x"])
def test_model_path_outside_the_bundle_is_refused(gpt, tmp_path, name):
    shutil.copy(gpt / "model.onnx", tmp_path / "outside.onnx")
    _edit(gpt, _files(model=name))
    with pytest.raises(BundleError, match="files.model"):
        edgeinfer.load(gpt)


def test_tokenizer_or_vocab_pointing_at_system_files_is_refused(gpt, tmp_path):
    _edit(gpt, _files(tokenizer="/etc/passwd"))
    with pytest.raises(BundleError, match="'files.tokenizer' is '/etc/passwd'"):
        edgeinfer.load(gpt)
    qa = _shipped("qa-dgcnn", tmp_path)
    _edit(qa, _files(vocab="../../../../../../etc/passwd"))
    with pytest.raises(BundleError, match="'files.vocab'.*without '..'"):
        edgeinfer.load(qa)


def test_extra_file_outside_does_not_probe_existence(gpt):
    """A name that leaves the folder is refused by its form alone: existing and missing targets read the same."""
    messages = []
    for target in ("../../../../etc/shadow", "../../../../etc/no-such-file-here"):
        _edit(gpt, _files(extra=target))
        with pytest.raises(BundleError) as caught:
            edgeinfer.load(gpt)
        messages.append(str(caught.value).replace(target, "TARGET"))
    assert messages[0] == messages[1]


def test_symlink_out_of_the_bundle_is_refused(gpt, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(gpt / "model.onnx", outside)
    os.symlink(outside, gpt / "model.onnx")
    with pytest.raises(BundleError, match="resolves to .*elsewhere.onnx, outside the bundle"):
        edgeinfer.load(gpt)


def test_symlink_inside_the_bundle_is_followed(gpt):
    shutil.move(gpt / "model.onnx", gpt / "weights.onnx")
    os.symlink("weights.onnx", gpt / "model.onnx")
    assert edgeinfer.load(gpt).vocab_size == 97


def test_manifest_symlinked_from_outside_is_refused(gpt, tmp_path):
    shutil.move(gpt / "manifest.json", tmp_path / "manifest.json")
    os.symlink(tmp_path / "manifest.json", gpt / "manifest.json")
    with pytest.raises(BundleError, match="outside the bundle"):
        edgeinfer.load(gpt)


# ---------------------------------------------------------------- digests
def test_flipped_weight_byte_is_caught(gpt):
    data = bytearray((gpt / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights: the graph still loads and answers, wrongly
    (gpt / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model file 'model.onnx' does not match its sha256"):
        edgeinfer.load(gpt)
    assert edgeinfer.load(gpt, verify=False).vocab_size == 97  # the opt-out skips the hashing


def test_a_verified_file_is_hashed_again_only_once_changed(gpt, tmp_path, monkeypatch):
    """An unchanged file verified before is not hashed again; a change that keeps the size and the modification time
    still moves the change time, and is caught."""
    from edgeinfer import bundle

    monkeypatch.setenv("EDGEINFER_CACHE_DIR", str(tmp_path / "cache"))
    hashed = []
    real = bundle.sha256_of
    monkeypatch.setattr(bundle, "sha256_of", lambda path: hashed.append(path.name) or real(path))
    edgeinfer.load(gpt)
    assert hashed == ["model.onnx"]  # the one file this bundle records a digest of
    hashed.clear()
    edgeinfer.load(gpt)
    assert hashed == []
    model = gpt / "model.onnx"
    stat = model.stat()
    original = model.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(BundleError, match="model file 'model.onnx' does not match its sha256"):
        edgeinfer.load(gpt)
    assert hashed == ["model.onnx"]
    monkeypatch.setenv("EDGEINFER_GRAPH_CACHE", "0")  # nothing kept: every load hashes
    model.write_bytes(original)
    hashed.clear()
    edgeinfer.load(gpt)
    edgeinfer.load(gpt)
    assert hashed == ["model.onnx", "model.onnx"]


def test_the_graph_probe_runs_again_only_for_another_manifest_or_graph(gpt, tmp_path, monkeypatch):
    from edgeinfer.lm import checks

    monkeypatch.setenv("EDGEINFER_CACHE_DIR", str(tmp_path / "cache"))
    probed = []
    real = checks._probe
    monkeypatch.setattr(checks, "_probe", lambda model: probed.append(model.max_positions) or real(model))
    for _ in range(2):
        edgeinfer.load(gpt)
    assert len(probed) == 1
    _edit(gpt, lambda m: m["model"].update(max_positions=m["model"]["max_positions"] * 4))  # a table too small
    with pytest.raises(BundleError, match="fails a one-token step at position model.max_positions - 1"):
        edgeinfer.load(gpt)
    assert len(probed) == 2


def test_changed_tokenizer_is_caught(tmp_path):
    chat = _shipped("chat", tmp_path)
    with (chat / "tokenizer.json").open("a") as f:
        f.write(" ")
    with pytest.raises(BundleError, match="tokenizer file 'tokenizer.json' does not match its sha256"):
        edgeinfer.load(chat)


def test_missing_digests_need_the_opt_out(gpt, monkeypatch):
    _edit(gpt, lambda m: m.pop("sha256"))
    with pytest.raises(BundleError, match="records no 'sha256' digests.*verify=False"):
        edgeinfer.load(gpt)
    assert edgeinfer.load(gpt, verify=False).n_layer == 2
    monkeypatch.setenv("EDGEINFER_VERIFY", "0")
    assert edgeinfer.load(gpt).n_layer == 2


def test_export_records_a_digest_per_file(gpt2_bundles):
    manifest = json.loads((gpt2_bundles["standard"] / "manifest.json").read_text())
    assert sorted(manifest["sha256"]) == ["model.onnx"]
    for name in ("chat", "qa", "qa-dgcnn", "xiangqi"):
        shipped = json.loads((SHIPPED / name / "manifest.json").read_text())
        assert sorted(shipped["sha256"]) == sorted(n for n in shipped["files"].values() if n)


# ---------------------------------------------------------------- numbers against the graph
@pytest.mark.parametrize("field, value, message", [
    ("n_layer", 0, "'model.n_layer' must be an integer >= 1, got 0"),
    ("n_layer", -1, "'model.n_layer' must be an integer >= 1, got -1"),
    ("n_layer", 4, "n_layer is 4 but inputs lack 'past_key_values.2.key'"),
    ("n_layer", 1, "n_layer is 1 but inputs hold 'past_key_values.1.key': the graph has more layers"),
    ("n_layer", 10**7, "n_layer is 10000000 but the graph has only 8 inputs"),
    ("n_head", 4, "model.n_head is 4 but the graph's 'past_key_values.0.key' has 3"),
    ("head_dim", 8, "model.head_dim is 8 but the graph's 'past_key_values.0.key' has 16"),
    ("vocab_size", 10**18, "model.vocab_size is 1000000000000000000 but the graph's 'logits' has 97"),
    ("max_positions", 65, "fails a one-token step at position model.max_positions - 1 = 64"),
    ("max_positions", 0, "'model.max_positions' must be an integer >= 1"),
    ("n_segments", 2, "lacks 'token_type_ids'"),
])
def test_model_numbers_are_checked_against_the_graph(gpt, field, value, message):
    _edit(gpt, lambda m: m["model"].update({field: value}))
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        edgeinfer.load(gpt)


@pytest.mark.parametrize("pattern", ["past.{}", "past.{layer", "past.{layer}.{part}", "past_key", "p.{layer!r:>{x}}",
                                     "past.{0}"])
def test_malformed_cache_name_patterns(gpt, pattern):
    _edit(gpt, lambda m: m["kv_cache"].update(past_key=pattern))
    with pytest.raises(BundleError, match="kv_cache.past_key"):
        edgeinfer.load(gpt)


def test_segment_table_smaller_than_the_manifest_says(tmp_path):
    chat = _shipped("chat", tmp_path)
    _edit(chat, lambda m: m["model"].update(n_segments=3))
    with pytest.raises(BundleError, match="last segment id"):
        edgeinfer.load(chat)


def test_deeply_nested_and_huge_manifests(gpt):
    (gpt / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="not valid JSON"):
        edgeinfer.load(gpt)
    with (gpt / "manifest.json").open("w") as f:
        f.write('{"pad": "' + "x" * (5 * 2**20) + '"}')
    with pytest.raises(BundleError, match="a manifest is at most"):
        edgeinfer.load(gpt)


# ---------------------------------------------------------------- tokenizer and vocab files
@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"{not json", b'{"version": "1.0"}', b"[]"])
def test_unreadable_tokenizer_names_the_file(tmp_path, content):
    chat = _shipped("chat", tmp_path)
    (chat / "tokenizer.json").write_bytes(content)
    _edit(chat, lambda m: None, rehash=True)
    with pytest.raises(BundleError, match="tokenizer file 'tokenizer.json' cannot be read"):
        edgeinfer.load(chat)


def test_tokenizer_ids_beyond_the_embedding(gpt):
    from conftest import byte_level_tokenizer

    byte_level_tokenizer(300).save(str(gpt / "tokenizer.json"))  # ids up to 299; the model has 97
    _edit(gpt, _files(tokenizer="tokenizer.json"), rehash=True)
    with pytest.raises(BundleError, match=r"has token id 299, beyond the model's vocabulary \(manifest model.vocab_size 97\)"):
        edgeinfer.load(gpt)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe", "vocab file 'vocab.json' is not valid JSON"),
    (b"{", "vocab file 'vocab.json' is not valid JSON"),
    (b'{"words": {}}', "no 'chars' table"),
    (b'{"chars": {"a": 4500}, "words": {}}', r"'chars' gives 'a' the id 4500, outside \[0, 4500\)"),
    (b'{"chars": {"a": true}, "words": {}}', "'chars' gives 'a' the id True"),
])
def test_broken_qa_vocab_names_the_file(tmp_path, content, message):
    qa = _shipped("qa-dgcnn", tmp_path)
    (qa / "vocab.json").write_bytes(content)
    _edit(qa, lambda m: None, rehash=True)
    with pytest.raises(BundleError, match=message):
        edgeinfer.load(qa)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["qa"].update(max_question_len=0), "'qa.max_question_len' must be an integer >= 1, got 0"),
    (lambda m: m["qa"].update(stride=200), r"'qa.stride' \(200\) must be below qa.window"),
    (lambda m: m["qa"].update(threshold="high"), "'qa.threshold' must be a number"),
    (lambda m: m["qa"].update(null_token="yes"), "'qa.null_token' must be true or false, got 'yes'"),
    (lambda m: m["model"].update(char_vocab=9000), "graph fails on a full window"),
    (lambda m: m["model"].pop("word_vocab"), "'model.word_vocab' must be an integer >= 2"),
])
def test_qa_numbers_are_checked(tmp_path, edit, message):
    qa = _shipped("qa-dgcnn", tmp_path)
    _edit(qa, edit)
    with pytest.raises(BundleError, match=message):
        edgeinfer.load(qa)


def test_shipped_bundles_pass_every_check():
    for name in ("chat", "qa", "qa-dgcnn", "xiangqi"):
        assert edgeinfer.load(SHIPPED / name, device="cpu").provider == "CPUExecutionProvider"
