"""Model bundles: a folder with `model.onnx`, an optional `tokenizer.json` and `manifest.json`.

The manifest is the only contract between export/ (which writes it) and the runtime (which trusts nothing
else). `read_manifest` checks it field by field and names the first thing that is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import BundleError

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1
TASKS = ("causal-lm", "chat", "xiangqi", "extractive-qa")
KV_LAYOUTS = ("concat", "shared_buffer")

# field -> expected type(s); nested dicts are checked recursively
_SCHEMA: dict[str, Any] = {
    "schema_version": int,
    "task": str,
    "files": {"model": str},
    "inputs": list,
    "outputs": list,
    "special_tokens": dict,
    "parity": {"max_abs_diff": float, "tolerance": float, "reference": str},
}
_CAUSAL_LM_SCHEMA: dict[str, Any] = {
    "model": {"n_layer": int, "n_head": int, "head_dim": int, "vocab_size": int, "max_positions": int},
    "kv_cache": {
        "layout": str,
        "padding_side": str,
        "past_key": str,
        "past_value": str,
        "present_key": str,
        "present_value": str,
    },
    "attention": str,
    "fused_ops": dict,
    "generation": dict,
}
_QA_SCHEMA: dict[str, Any] = {
    "reader": str,
    "qa": {"window": int, "stride": int, "max_answer_len": int, "max_question_len": int, "batch_size": int},
}


def _check(data: dict, schema: dict, where: str) -> None:
    for key, expected in schema.items():
        path = f"{where}.{key}" if where else key
        if key not in data:
            raise BundleError(f"manifest field '{path}' is missing")
        value = data[key]
        if isinstance(expected, dict):
            if not isinstance(value, dict):
                raise BundleError(f"manifest field '{path}' must be an object, got {type(value).__name__}")
            _check(value, expected, path)
        elif expected is float:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise BundleError(f"manifest field '{path}' must be a number, got {value!r}")
        elif not isinstance(value, expected) or isinstance(value, bool) and expected is int:
            raise BundleError(f"manifest field '{path}' must be {expected.__name__}, got {value!r}")


def validate_manifest(data: Any) -> dict:
    """Return `data` if it is a valid manifest of this schema version, else raise BundleError."""
    if not isinstance(data, dict):
        raise BundleError("manifest must be a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"manifest schema_version is {version!r}; this edgeinfer reads version {SCHEMA_VERSION}")
    _check(data, _SCHEMA, "")
    if data["task"] not in TASKS:
        raise BundleError(f"manifest task {data['task']!r} is unknown; expected one of {', '.join(TASKS)}")
    for side in ("inputs", "outputs"):
        for i, spec in enumerate(data[side]):
            if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and "dtype" in spec):
                raise BundleError(f"manifest field '{side}[{i}]' needs a name and a dtype")
    if data["task"] in ("causal-lm", "chat", "xiangqi"):
        _check(data, _CAUSAL_LM_SCHEMA, "")
        if data["kv_cache"]["layout"] not in KV_LAYOUTS:
            raise BundleError(f"manifest kv_cache.layout {data['kv_cache']['layout']!r} is not one of {KV_LAYOUTS}")
    if data["task"] == "extractive-qa":
        _check(data, _QA_SCHEMA, "")
    return data


def read_manifest(folder: str | Path) -> tuple[Path, dict]:
    """Resolve a bundle folder and return (folder, validated manifest); the files it names must exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"bundle {folder} is not a folder")
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"bundle {folder} has no {MANIFEST_FILE}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    manifest = validate_manifest(data)
    for role, name in manifest["files"].items():
        if name is not None and not (folder / name).is_file():
            raise BundleError(f"bundle {folder} is missing its {role} file {name!r}")
    return folder, manifest


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    path = Path(folder) / MANIFEST_FILE
    path.write_text(json.dumps(validate_manifest(manifest), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
