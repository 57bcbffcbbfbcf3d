"""A Hugging Face checkpoint folder's `config.json`, read without torch.

`edgeinfer export` reads it before importing torch and transformers (seconds), so a wrong folder is refused at
once; the loaders read it again through here, so the API refuses the same folders with the same words.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeinfer.errors import InputError

# transformers' activation names -> our GELU forms
HF_ACTIVATIONS = {
    "gelu": "exact",
    "gelu_new": "tanh",
    "gelu_pytorch_tanh": "tanh",
    "gelu_fast": "tanh",
    "quick_gelu": "sigmoid",
}
# --task of `edgeinfer export` -> the architectures (config.json "architectures") it imports, one importer each
ARCHITECTURES = {
    "causal-lm": ("GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM"),
    "qa": ("BertForQuestionAnswering", "DistilBertForQuestionAnswering", "RobertaForQuestionAnswering"),
    "masked-lm": ("BertForMaskedLM",),
}
# a config saved without "architectures" names its model by model_type
_BY_MODEL_TYPE = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "bert": "BertForQuestionAnswering"}


def supported() -> str:
    """The tasks and architectures export takes, in words (for refusals and --help)."""
    return "; ".join(f"{task}: {', '.join(names)}" for task, names in ARCHITECTURES.items())


def architecture(config: dict, task: str) -> str:
    """The architecture a checkpoint config names, refused with an InputError unless `task` exports it."""
    names = config.get("architectures")
    model_type = config.get("model_type")
    if not isinstance(model_type, (str, type(None))) or not isinstance(names, (list, type(None))) \
            or not all(isinstance(n, str) for n in names or []):
        raise InputError(f"config.json's model_type must be a string and its architectures a list of strings, got "
                         f"{model_type!r} and {names!r}")
    name = names[0] if names else _BY_MODEL_TYPE.get(model_type, model_type)
    if name not in ARCHITECTURES[task]:
        others = [other for other, archs in ARCHITECTURES.items() if name in archs]
        hint = f" (export it with --task {others[0]})" if others else ""
        raise InputError(f"a {name!r} checkpoint (model_type {model_type!r}) is not exported as {task}{hint}; "
                         f"export takes {supported()}")
    return name


def read_hf_config(folder: str | Path, task: str | None = None) -> dict:
    """The checkpoint's config as a dict; an InputError naming the problem for a folder that cannot be one.

    With `task`, a config naming an architecture that task does not export is refused too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder (expected a Hugging Face checkpoint folder)")
    path = folder / "config.json"
    if not path.is_file():
        raise InputError(f"{folder} is not a Hugging Face checkpoint folder (no config.json)")
    config = read_json_object(path)
    if task is not None:
        architecture(config, task)
    return config


def read_json_object(path: Path) -> dict:
    """A checkpoint's JSON file (config.json, tokenizer_config.json) as a dict, or an InputError naming the problem."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data
