"""A Hugging Face checkpoint folder's `config.json`, read without torch.

`edgeinfer export` reads it before importing torch and transformers (seconds), so a wrong folder is refused at
once; the loaders read it again through here, so the API refuses the same folders with the same words.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeinfer.errors import InputError

# --task of `edgeinfer export` -> the model_type its importer reads
MODEL_TYPES = {"causal-lm": "gpt2", "qa": "bert"}


def read_hf_config(folder: str | Path, task: str | None = None) -> dict:
    """The checkpoint's config as a dict; an InputError naming the problem for a folder that cannot be one.

    With `task`, a config whose model_type is another model's is refused too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder (expected a Hugging Face checkpoint folder)")
    path = folder / "config.json"
    if not path.is_file():
        raise InputError(f"{folder} is not a Hugging Face checkpoint folder (no config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InputError(f"{path} must hold a JSON object, got {type(config).__name__}")
    expected = MODEL_TYPES.get(task)
    if expected is not None and config.get("model_type", expected) != expected:
        raise InputError(f"{path} describes a {config['model_type']!r} model; a {task} export takes model_type "
                         f"{expected!r}")
    return config
