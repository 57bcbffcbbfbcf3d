"""A checkpoint's tokenizer as a bundle carries it: the `tokenizers` JSON file, whatever files the checkpoint ships,
and its chat template.

Why: the runtime reads tokenizer.json only (the `tokenizers` library, no transformers), while many checkpoints ship
just the files of a slow tokenizer: a sentencepiece tokenizer.model (Llama-2-era decoders), vocab.json + merges.txt
(GPT-2 byte-level BPE) or vocab.txt (BERT WordPiece). transformers converts those to its fast tokenizer, whose
backend is exactly such a file; export saves that, so the bundle tokenizes as transformers' fast tokenizer does.
CPM's tokenizer (jieba before sentencepiece) is not of this kind: `hf_bundle.cpm_tokenizer` carries it.
"""

from __future__ import annotations

from pathlib import Path

from .hf_config import read_json_object
from .onnx_export import ExportError

SLOW_TOKENIZER_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "vocab.txt")


def tokenizer_config(folder: Path) -> dict:
    """The checkpoint's tokenizer_config.json ({} when it has none)."""
    path = folder / "tokenizer_config.json"
    return read_json_object(path) if path.is_file() else {}


def tokenizer_json(folder: Path, work: Path) -> Path | None:
    """The checkpoint's tokenizer.json, else its slow tokenizer converted into work/tokenizer.json; None when the
    folder has no tokenizer files at all."""
    if (folder / "tokenizer.json").is_file():
        return folder / "tokenizer.json"
    shipped = [name for name in SLOW_TOKENIZER_FILES if (folder / name).is_file()]
    if not shipped:
        return None
    tokenizer = _transformers_tokenizer(folder, ", ".join(shipped))
    if not tokenizer.is_fast:
        raise ExportError(f"transformers has no fast tokenizer for this checkpoint's {', '.join(shipped)} "
                          f"({type(tokenizer).__name__}), and bundles carry a tokenizers JSON file; save the "
                          "checkpoint with a tokenizer.json")
    path = work / "tokenizer.json"
    tokenizer.backend_tokenizer.save(str(path))
    return path


def chat_template(folder: Path, work: Path) -> tuple[Path, dict[str, str]] | None:
    """The checkpoint's chat template (tokenizer_config.json's `chat_template`, or chat_template.jinja) written to
    work/chat_template.jinja, with the special tokens' text it may name, both as transformers' tokenizer of the folder
    reads them; None when the checkpoint has none."""
    if not ((folder / "chat_template.jinja").is_file() or "chat_template" in tokenizer_config(folder)):
        return None
    tokenizer = _transformers_tokenizer(folder, "with its chat template")
    template = tokenizer.chat_template
    template = template.get("default") if isinstance(template, dict) else template  # named templates: the default
    if not isinstance(template, str):
        return None
    path = work / "chat_template.jinja"
    path.write_text(template, encoding="utf-8")
    return path, {name: text for name, text in tokenizer.special_tokens_map.items() if isinstance(text, str)}


def _transformers_tokenizer(folder: Path, what: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=True)
    except Exception as exc:  # transformers raises many kinds for unreadable or unconvertible tokenizer files
        raise ExportError(f"the checkpoint's tokenizer ({what}) cannot be read by transformers: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
