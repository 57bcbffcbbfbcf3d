"""Model bundles: a folder with `model.onnx`, an optional `tokenizer.json` and `manifest.json`.

The manifest is the only contract between export/ (which writes it) and the runtime (which trusts nothing
else). `Manifest` is its one definition on both sides: `Manifest.new` stamps the schema version, `write` and
`read` check it field by field and name the first thing that is wrong.

Optional blocks: `generation` holds the default decoding options of a decoder bundle (`GENERATION_FIELDS`);
`session` holds onnxruntime session settings (`SESSION_FIELDS`) that a caller's arguments override.
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
# decoding options a generation block may set (a logits processor is code, so only callers pass one)
GENERATION_FIELDS = ("max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p",
                     "repetition_penalty", "stop_token_ids", "stop_strings")
SESSION_FIELDS = {"threads": int, "disabled_optimizers": list, "provider_options": dict}

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
        unknown = sorted(set(data["generation"]) - set(GENERATION_FIELDS))
        if unknown:
            raise BundleError(f"manifest field 'generation.{unknown[0]}' is not a decoding option "
                              f"(known: {', '.join(GENERATION_FIELDS)})")
    if data["task"] == "extractive-qa":
        _check(data, _QA_SCHEMA, "")
    session = data.get("session", {})
    if not isinstance(session, dict):
        raise BundleError("manifest field 'session' must be an object")
    for key, value in session.items():
        expected = SESSION_FIELDS.get(key)
        if expected is None:
            raise BundleError(f"manifest field 'session.{key}' is unknown (known: {', '.join(SESSION_FIELDS)})")
        if not isinstance(value, expected) or isinstance(value, bool):
            raise BundleError(f"manifest field 'session.{key}' must be {expected.__name__}, got {value!r}")
    return data


class Manifest(dict):
    """A bundle's manifest: a validated JSON object, written by export/ and read by the runtime."""

    @classmethod
    def new(cls, task: str, fields: dict[str, Any]) -> Manifest:
        """A manifest of this schema version for `task` with `fields` (checked when written)."""
        return cls(schema_version=SCHEMA_VERSION, task=task, **fields)

    @classmethod
    def read(cls, folder: str | Path) -> tuple[Path, Manifest]:
        """Resolve a bundle folder and return (folder, manifest); the files it names must exist."""
        folder = Path(folder)
        if not folder.is_dir():
            raise BundleError(f"bundle {folder} is not a folder")
        path = folder / MANIFEST_FILE
        if not path.is_file():
            raise BundleError(f"bundle {folder} has no {MANIFEST_FILE}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise BundleError(f"{path} is not valid JSON: {exc}") from exc
        manifest = cls(validate_manifest(data))
        for role, name in manifest["files"].items():
            if name is not None and not (folder / name).is_file():
                raise BundleError(f"bundle {folder} is missing its {role} file {name!r}")
        return folder, manifest

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        text = json.dumps(validate_manifest(dict(self)), indent=2, ensure_ascii=False)
        path.write_text(text + "\n", encoding="utf-8")
        return path

    @property
    def generation(self) -> dict:
        return self.get("generation", {})

    @property
    def session(self) -> dict:
        return self.get("session", {})
