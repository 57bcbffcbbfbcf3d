"""A checkpoint's tokenizer as the `tokenizers` JSON file a bundle carries, whatever files the checkpoint ships.

Why: the runtime reads tokenizer.json only (the `tokenizers` library, no transformers), while many checkpoints ship
just the files of a slow tokenizer: a sentencepiece tokenizer.model (Llama-2-era decoders), vocab.json + merges.txt
(GPT-2 byte-level BPE) or vocab.txt (BERT WordPiece). transformers converts those to its fast tokenizer, whose
backend is exactly such a file; export saves that, so the bundle tokenizes as transformers' fast tokenizer does.
CPM's tokenizer (jieba before sentencepiece) is not of this kind: `hf_bundle.cpm_tokenizer` carries it.
"""

from __future__ import annotations

from pathlib import Path

from .onnx_export import ExportError

SLOW_TOKENIZER_FILES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "vocab.txt")


def tokenizer_json(folder: Path, work: Path) -> Path | None:
    """The checkpoint's tokenizer.json, else its slow tokenizer converted into work/tokenizer.json; None when the
    folder has no tokenizer files at all."""
    if (folder / "tokenizer.json").is_file():
        return folder / "tokenizer.json"
    shipped = [name for name in SLOW_TOKENIZER_FILES if (folder / name).is_file()]
    if not shipped:
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, use_fast=True)
    except Exception as exc:  # transformers raises many kinds for unreadable or unconvertible tokenizer files
        raise ExportError(f"the checkpoint's tokenizer ({', '.join(shipped)}) cannot be read by transformers: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if not tokenizer.is_fast:
        raise ExportError(f"transformers has no fast tokenizer for this checkpoint's {', '.join(shipped)} "
                          f"({type(tokenizer).__name__}), and bundles carry a tokenizers JSON file; save the "
                          "checkpoint with a tokenizer.json")
    path = work / "tokenizer.json"
    tokenizer.backend_tokenizer.save(str(path))
    return path
