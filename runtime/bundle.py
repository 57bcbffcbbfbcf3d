"""Model bundles: a folder with `model.onnx`, an optional `tokenizer.json` and `manifest.json`.

The manifest is the only contract between export/ (which writes it) and the runtime (which trusts nothing
else). `Manifest` is its one definition on both sides: `Manifest.new` stamps the schema version, `write` and
`read` check it field by field and name the first thing that is wrong.

A bundle is confined to its folder: every file the manifest names is a relative path that resolves (links
followed) inside the folder, and its sha256, recorded by `write`, is checked by `read` (`verify=False` or
`EDGEINFER_VERIFY=0` skips the hashing: about 0.3 s per 500 MB of weights here, 1.5 GB/s).

Optional blocks: `generation` holds the default decoding options of a decoder bundle (`GENERATION_FIELDS`);
`session` holds onnxruntime session settings (`SESSION_FIELDS`) that a caller's arguments override.
A decoder's `kv_cache.past_key` and `present_key` are null when its attention reads no keys (the dense and random
synthesizers): the cache then holds values only.
A Xiangqi bundle is a decoder scoring each move's 4 characters, or, when its `model.move_head` is present
(`square_pair_head`), a graph from the position's prompt to a logit per (from, to) square pair, `move_logits`,
with no cache and no decoding options.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import string
import threading
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .errors import BundleError
from .local_cache import known_digest, remember_digest
from .signals import signals_to_main_thread

MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 4 * 2**20  # shipped manifests are ~10 kB; a larger one is not a manifest
VERIFY_ENV = "EDGEINFER_VERIFY"
SCHEMA_VERSION = 1
TASKS = ("causal-lm", "chat", "xiangqi", "extractive-qa", "masked-lm")
KV_LAYOUTS = ("concat", "shared_buffer")
# decoding options a generation block may set (a logits processor is code, so only callers pass one)
GENERATION_FIELDS = ("max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p",
                     "repetition_penalty", "stop_token_ids", "stop_strings")
SESSION_FIELDS = {"threads": int, "allow_spinning": bool, "disabled_optimizers": list, "provider_options": dict}
MAX_THREADS = 1024  # onnxruntime starts every thread it is told to; no machine this runs on has more cores
INT64_MAX = 2**63 - 1  # ids, positions and sizes reach the graph as int64
# the first word of a quantization record's weights for int8 weights, which saturate on x86 CPUs without VNNI
# (edgeinfer.export.quantize says why); uint8 ones do not
SIGNED_INT8 = "int8"
MAX_QA_WINDOW = 2**16  # units of one QA model call (shipped: 200 characters; BERT: 384 tokens); load probes one

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
        "past_value": str,
        "present_value": str,
    },
    "attention": str,
    "fused_ops": dict,
    "generation": dict,
}
_SQUARE_PAIR_SCHEMA: dict[str, Any] = {
    "model": {"n_layer": int, "n_head": int, "head_dim": int, "vocab_size": int, "max_positions": int,
              "move_head": {"kind": str, "dim": int}},
}
MOVE_HEADS = ("square_pairs",)
_QA_SCHEMA: dict[str, Any] = {
    "reader": str,
    "model": dict,
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


def _check_at_least(section: dict, where: str, fields: tuple[str, ...], minimum: int = 1,
                    maximum: int = INT64_MAX) -> None:
    for key in fields:
        if key in section and not (isinstance(section[key], int) and not isinstance(section[key], bool)
                                   and section[key] >= minimum):
            raise BundleError(f"manifest field '{where}.{key}' must be an integer >= {minimum}, got {section[key]!r}")
        if key in section and section[key] > maximum:
            raise BundleError(f"manifest field '{where}.{key}' must be at most {maximum}, got {section[key]}")


def layer_names(pattern: Any, where: str, n_layer: int) -> list[str]:
    """The per-layer names a KV-cache pattern such as 'past_key_values.{layer}.key' gives for n_layer layers."""
    try:
        fields = [(field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(pattern)
                  if field is not None]
    except (ValueError, TypeError) as exc:
        raise BundleError(f"manifest field '{where}' is not a name pattern: {exc}") from exc
    if fields != [("layer", "", None)]:
        raise BundleError(f"manifest field '{where}' must hold '{{layer}}' once (no format spec) and no other field, got {pattern!r}")
    return [pattern.format(layer=i) for i in range(n_layer)]


def cache_parts(kv: dict) -> tuple[str, ...]:
    """What a decoder caches per layer, in graph order: ("key", "value"), or ("value",) when the key patterns are
    null."""
    return ("value",) if kv["past_key"] is None else ("key", "value")


def weight_storage(manifest: dict) -> tuple[str, str]:
    """A quantization record's weights split as (how they are stored, the rest): ("int8", "symmetric, ...");
    ("", "") for a bundle without one."""
    storage, _, rest = str((manifest.get("quantization") or {}).get("weights", "")).partition(", ")
    return storage, rest


def _check_key_patterns(kv: dict) -> None:
    for part in ("past_key", "present_key"):
        if part not in kv:
            raise BundleError(f"manifest field 'kv_cache.{part}' is missing")
        if kv[part] is not None and not isinstance(kv[part], str):
            raise BundleError(f"manifest field 'kv_cache.{part}' must be str or null (a cache of values only), "
                              f"got {kv[part]!r}")
    if (kv["past_key"] is None) != (kv["present_key"] is None):
        raise BundleError("manifest fields 'kv_cache.past_key' and 'kv_cache.present_key' must both be null "
                          "(a cache of values only) or both name tensors")


def _check_decoder(data: dict) -> None:
    """Numbers and names of a decoder manifest that hold without the graph (session checks do the rest)."""
    model = data["model"]
    _check_at_least(model, "model", ("n_layer", "n_head", "head_dim", "vocab_size", "max_positions", "n_kv_head"))
    _check_at_least(model, "model", ("n_segments",), minimum=0)
    if model["max_positions"] < 2:
        raise BundleError(f"manifest model.max_positions is {model['max_positions']}: a decoder needs 2 or more "
                          "(a prompt token and the one it generates)")
    _check_at_least(model, "model", ("bidirectional_prefix",), minimum=0, maximum=model["max_positions"])
    if model.get("bidirectional_prefix") and data.get("attention_mask") != "query_key":
        raise BundleError("manifest model.bidirectional_prefix needs attention_mask 'query_key' (the graph must take "
                          "the whole mask)")
    kv = data["kv_cache"]
    _check_key_patterns(kv)
    cached = cache_parts(kv)
    for side, prefix in (("inputs", "past"), ("outputs", "present")):
        parts = [f"{prefix}_{part}" for part in cached]
        names = {spec["name"] for spec in data[side]}
        if len(parts) * model["n_layer"] > len(names):  # before formatting n_layer names: n_layer may be huge
            raise BundleError(f"manifest model.n_layer is {model['n_layer']} but the graph has only "
                              f"{len(names)} {side}")
        for part in parts:
            expected = layer_names(kv[part], f"kv_cache.{part}", model["n_layer"] + 1)
            missing = [name for name in expected[:-1] if name not in names]
            if missing:
                raise BundleError(f"manifest model.n_layer is {model['n_layer']} but {side} lack {missing[0]!r} "
                                  f"(kv_cache.{part})")
            if expected[-1] in names:
                raise BundleError(f"manifest model.n_layer is {model['n_layer']} but {side} hold {expected[-1]!r}: "
                                  "the graph has more layers")


def square_pair_head(manifest: dict) -> bool:
    """Whether a (task "xiangqi") manifest's graph scores moves as square pairs rather than as 4 characters."""
    return manifest["task"] == "xiangqi" and isinstance(manifest.get("model"), dict) and "move_head" in manifest["model"]


def _check_square_pair_head(data: dict) -> None:
    _check(data, _SQUARE_PAIR_SCHEMA, "")
    model = data["model"]
    _check_at_least(model, "model", ("n_layer", "n_head", "head_dim", "vocab_size", "max_positions"))
    _check_at_least(model, "model", ("n_segments",), minimum=0)
    _check_at_least(model["move_head"], "model.move_head", ("dim",))
    if model["move_head"]["kind"] not in MOVE_HEADS:
        raise BundleError(f"manifest model.move_head.kind {model['move_head']['kind']!r} is not one of {MOVE_HEADS}")
    names = {side: [spec["name"] for spec in data[side]] for side in ("inputs", "outputs")}
    expected = {"inputs": ["input_ids", *(["token_type_ids"] if model.get("n_segments") else [])],
                "outputs": ["move_logits"]}
    for side, wanted in expected.items():
        if sorted(names[side]) != sorted(wanted):
            raise BundleError(f"manifest {side} are {names[side]}; a square-pair move head's graph has {wanted}")


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
    if square_pair_head(data):
        _check_square_pair_head(data)
    elif data["task"] in ("causal-lm", "chat", "xiangqi"):
        _check(data, _CAUSAL_LM_SCHEMA, "")
        _check_decoder(data)
        if data["kv_cache"]["layout"] not in KV_LAYOUTS:
            raise BundleError(f"manifest kv_cache.layout {data['kv_cache']['layout']!r} is not one of {KV_LAYOUTS}")
        unknown = sorted(set(data["generation"]) - set(GENERATION_FIELDS))
        if unknown:
            raise BundleError(f"manifest field 'generation.{unknown[0]}' is not a decoding option "
                              f"(known: {', '.join(GENERATION_FIELDS)})")
    if data["task"] == "extractive-qa":
        _check(data, _QA_SCHEMA, "")
        _check_at_least(data["qa"], "qa", ("max_answer_len", "batch_size", "batch_tokens"))
        _check_at_least(data["qa"], "qa", ("window", "max_question_len"), maximum=MAX_QA_WINDOW)
        _check_at_least(data["qa"], "qa", ("stride",), minimum=0)
        if data["qa"]["stride"] >= data["qa"]["window"]:
            raise BundleError(f"manifest field 'qa.stride' ({data['qa']['stride']}) must be below qa.window "
                              f"({data['qa']['window']})")
        threshold = data["qa"].get("threshold")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or isinstance(threshold, float) and math.isnan(threshold)):
            raise BundleError(f"manifest field 'qa.threshold' must be a number, got {threshold!r}")
        if not isinstance(data["qa"].get("null_token", False), bool):
            raise BundleError(f"manifest field 'qa.null_token' must be true or false, got {data['qa']['null_token']!r}")
    session = data.get("session", {})
    if not isinstance(session, dict):
        raise BundleError("manifest field 'session' must be an object")
    for key, value in session.items():
        expected = SESSION_FIELDS.get(key)
        if expected is None:
            raise BundleError(f"manifest field 'session.{key}' is unknown (known: {', '.join(SESSION_FIELDS)})")
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise BundleError(f"manifest field 'session.{key}' must be {expected.__name__}, got {value!r}")
    _check_at_least(session, "session", ("threads",), minimum=0, maximum=MAX_THREADS)
    bad = next((name for name, options in session.get("provider_options", {}).items() if not isinstance(options, dict)),
               None)
    if bad is not None:
        raise BundleError(f"manifest field 'session.provider_options.{bad}' must be an object of provider settings")
    return data


class Manifest(dict):
    """A bundle's manifest: a validated JSON object, written by export/ and read by the runtime."""

    @classmethod
    def new(cls, task: str, fields: dict[str, Any]) -> Manifest:
        """A manifest of this schema version for `task` with `fields` (checked when written)."""
        return cls(schema_version=SCHEMA_VERSION, task=task, **fields)

    @classmethod
    def read(cls, folder: str | Path, verify: bool | None = None) -> tuple[Path, Manifest]:
        """Resolve a bundle folder and return (folder, manifest).

        The files it names must exist inside the folder and, unless `verify` is False (default: True unless the
        EDGEINFER_VERIFY environment variable is "0"), match the sha256 digests the manifest records.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise BundleError(f"bundle {folder} is not a folder")
        path = folder / MANIFEST_FILE
        if not path.is_file():
            raise BundleError(f"bundle {folder} has no {MANIFEST_FILE}")
        path = inside(folder, MANIFEST_FILE, MANIFEST_FILE)
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is {path.stat().st_size} bytes; a manifest is at most {MAX_MANIFEST_BYTES}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise BundleError(f"{path} is not valid JSON: {str(exc)[:200]}") from exc
        manifest = cls(validate_manifest(data))
        check_digests_in_background(folder, manifest, verify)()
        return folder, manifest

    def write(self, folder: str | Path) -> Path:
        """Write manifest.json into `folder`, recording the sha256 of every file it names (written first)."""
        folder = Path(folder)
        digests = {name: sha256_of(inside(folder, role, name)) for role, name in self["files"].items() if name}
        self["sha256"] = digests
        path = folder / MANIFEST_FILE
        text = json.dumps(validate_manifest(dict(self)), indent=2, ensure_ascii=False)
        path.write_text(text + "\n", encoding="utf-8")
        return path

    @property
    def generation(self) -> dict:
        return self.get("generation", {})

    @property
    def session(self) -> dict:
        return self.get("session", {})


def inside(folder: Path, role: str, name: Any) -> Path:
    """The file `name` of the bundle at `folder`, refused unless it is a relative path that stays in the folder.

    Links are followed before the check, so a link to a file outside the bundle is refused too.
    """
    if not isinstance(name, str) or not name or "\x00" in name:
        raise BundleError(f"manifest field 'files.{role}' must be a file name, got {name!r}")
    pure = PurePosixPath(name)
    if pure.is_absolute() or PureWindowsPath(name).is_absolute() or ".." in pure.parts or "\\" in name:
        raise BundleError(f"manifest field 'files.{role}' is {name!r}: bundle files are relative paths inside the "
                          "bundle folder, without '..'")
    try:
        root = folder.resolve(strict=True)
        resolved = (folder / name).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a loop of links
        raise BundleError(f"bundle {folder} is missing its {role} file {name!r}") from None
    if not resolved.is_relative_to(root):
        raise BundleError(f"bundle {folder}: {role} file {name!r} resolves to {resolved}, outside the bundle")
    if not resolved.is_file():
        raise BundleError(f"bundle {folder} is missing its {role} file {name!r}")
    return resolved


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def check_digests_in_background(folder: Path, manifest: dict, verify: bool | None) -> Callable[[], None]:
    """Start hashing the bundle's files on a thread; the returned function waits and raises a mismatch.

    hashlib releases the GIL, so the hashing (0.3 s per 500 MB) overlaps opening the session instead of adding to
    it; a file verified before and unchanged since is not hashed again (`local_cache.known_digest`). Paths and the
    presence of digests are checked here, before any work. verify: None follows EDGEINFER_VERIFY.
    """
    files = {role: inside(folder, role, name) for role, name in manifest["files"].items() if name is not None}
    if not (verify if verify is not None else os.environ.get(VERIFY_ENV, "1") != "0"):
        return lambda: None
    digests = manifest.get("sha256")
    if not isinstance(digests, dict):
        raise BundleError(f"bundle {folder}: the manifest records no 'sha256' digests of its files; re-export it, "
                          f"or load it with verify=False ({VERIFY_ENV}=0)")
    expected = {}
    for role in files:
        name = manifest["files"][role]
        if not isinstance(digests.get(name), str):
            raise BundleError(f"bundle {folder}: manifest field 'sha256' has no digest for {name!r}")
        expected[role] = digests[name].lower()
    mismatched: list[str] = []

    def check() -> None:
        for role, path in files.items():
            if known_digest(path) == expected[role]:
                continue
            if sha256_of(path) != expected[role]:
                mismatched.append(role)
            else:
                remember_digest(path, expected[role])

    worker = threading.Thread(target=check, daemon=True)
    with signals_to_main_thread():
        worker.start()

    def wait() -> None:
        worker.join()
        if mismatched:
            role = mismatched[0]
            raise BundleError(f"bundle {folder}: {role} file {manifest['files'][role]!r} does not match its sha256 "
                              "in the manifest (corrupt, or changed after export)")
    return wait


def load_tokenizer(folder: Path, manifest: dict, vocab_size: int | None = None):
    """The bundle's `tokenizers` tokenizer (None when it names none); every id it makes must be below vocab_size."""
    block = manifest.get("tokenizer")
    if isinstance(block, dict) and block.get("type") == "cpm":
        from .cpm import open_cpm_tokenizer

        return open_cpm_tokenizer(folder, manifest, vocab_size)
    name = manifest["files"].get("tokenizer")
    if not name:
        return None
    from tokenizers import Tokenizer

    path = inside(folder, "tokenizer", name)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for every kind of unreadable file
        raise BundleError(f"bundle {folder}: tokenizer file {name!r} cannot be read: {first_line(exc)}") from exc
    largest = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)
    if vocab_size is not None and largest >= vocab_size:
        raise BundleError(f"bundle {folder}: tokenizer file {name!r} has token id {largest}, beyond the model's "
                          f"vocabulary (manifest model.vocab_size {vocab_size})")
    return tokenizer


def read_json_file(folder: Path, manifest: dict, role: str) -> Any:
    """A JSON file the manifest names under files.<role>, or a BundleError naming the file."""
    name = manifest["files"].get(role)
    if not name:
        raise BundleError(f"bundle {folder}: manifest field 'files.{role}' names no file")
    path = inside(folder, role, name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"bundle {folder}: {role} file {name!r} is not valid JSON: {first_line(exc)}") from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
