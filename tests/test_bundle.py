"""Bundle validation: a corrupt bundle is refused with an error naming the problem."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import edgeinfer
from edgeinfer.errors import BundleError, InputError


@pytest.fixture
def bundle(gpt2_bundles, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(gpt2_bundles["standard"], copy)
    return copy


def _edit_manifest(bundle, edit):
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_missing_model_file(bundle):
    (bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing its model file 'model.onnx'"):
        edgeinfer.load(bundle)


def test_missing_manifest(bundle):
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="has no manifest.json"):
        edgeinfer.load(bundle)


def test_truncated_model(bundle):
    data = (bundle / "model.onnx").read_bytes()
    (bundle / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="model file 'model.onnx' does not match its sha256"):
        edgeinfer.load(bundle)
    with pytest.raises(BundleError, match="onnxruntime cannot load"):
        edgeinfer.load(bundle, verify=False)


def test_wrong_schema_version(bundle):
    _edit_manifest(bundle, lambda m: m.update(schema_version=99))
    with pytest.raises(BundleError, match="schema_version is 99"):
        edgeinfer.load(bundle)


def test_wrong_field_type(bundle):
    _edit_manifest(bundle, lambda m: m["model"].update(n_layer="two"))
    with pytest.raises(BundleError, match="'model.n_layer' must be int"):
        edgeinfer.load(bundle)


def test_missing_field(bundle):
    _edit_manifest(bundle, lambda m: m.pop("kv_cache"))
    with pytest.raises(BundleError, match="'kv_cache' is missing"):
        edgeinfer.load(bundle)


def test_io_names_must_match(bundle):
    _edit_manifest(bundle, lambda m: m["inputs"][0].update(name="tokens"))
    with pytest.raises(BundleError, match=r"inputs do not match the manifest: missing \['tokens'\]"):
        edgeinfer.load(bundle)


def test_not_json(bundle):
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        edgeinfer.load(bundle)


def test_bad_ids_are_refused_and_model_stays_usable(gpt2_bundles):
    model = edgeinfer.load(gpt2_bundles["standard"], device="cpu")
    for bad, message in [
        (np.array([[1, 2, 500]]), "outside"),
        (np.zeros((1, 0), dtype=np.int64), "non-empty"),
        (np.array([[1.5, 2.0]]), "integers"),
        (np.ones((1, 65), dtype=np.int64), "exceeds the model's 64 positions"),
    ]:
        with pytest.raises(InputError, match=message):
            model.logits(bad)
    assert model.logits(np.array([[1, 2, 3]])).shape == (1, 3, 97)


def test_import_does_not_load_torch(gpt2_bundles):
    code = (
        "import sys, numpy as np, edgeinfer\n"
        f"m = edgeinfer.load({str(gpt2_bundles['standard'])!r})\n"
        "m.logits(np.array([[1, 2, 3]]))\n"
        "print(sorted(x for x in ('torch', 'transformers', 'optimum') if x in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_export_and_info(tmp_path, hf_gpt2, capsys):
    from edgeinfer.cli import main

    hf_gpt2.save_pretrained(tmp_path / "hf")
    assert main(["export", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "b"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["manifest"]["fused_ops"] == {"Gelu": 2, "GroupQueryAttention": 2}  # auto: head size 16
    args = ["export", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "b"), "--attention", "standard"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["manifest"]["fused_ops"] == {"Attention": 2, "Gelu": 2}
    assert main(["info", str(tmp_path / "b"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["provider"] == "CPUExecutionProvider"
    assert main(["info", str(tmp_path / "nothing"), "--json"]) == 2
    assert "is not a folder" in json.loads(capsys.readouterr().out)["error"]
