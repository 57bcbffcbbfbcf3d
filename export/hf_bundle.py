"""Hugging Face checkpoint folder -> bundle, with parity measured against transformers itself."""

from __future__ import annotations

import json
from pathlib import Path

from .hf_import import import_checkpoint, special_tokens_from_hf, stop_tokens_from_hf
from .onnx_export import export_gpt_bundle
from .progress import step

CPM_TOKENIZERS = ("CpmTokenizer", "CpmTokenizerFast")


def cpm_tokenizer(folder: Path) -> dict | None:
    """The manifest `tokenizer` block of a checkpoint folder whose tokenizer is CPM's (tokenizer_config.json names
    CpmTokenizer and spiece.model is there), else None; read through transformers' own CpmTokenizer, so the added
    tokens and their ids are the ones transformers uses (`edgeinfer.cpm` has the algorithm)."""
    config = folder / "tokenizer_config.json"
    if not (config.is_file() and (folder / "spiece.model").is_file()):
        return None
    if json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") not in CPM_TOKENIZERS:
        return None
    from transformers import CpmTokenizer

    tokenizer = CpmTokenizer.from_pretrained(folder, local_files_only=True)
    added = tokenizer.added_tokens_decoder
    return {
        "type": "cpm",
        "added_tokens": {token.content: i for i, token in sorted(added.items())},
        "do_lower_case": tokenizer.do_lower_case,
        "remove_space": tokenizer.remove_space,
        "keep_accents": tokenizer.keep_accents,
    }


def export_hf_checkpoint(
    source,
    out_dir: str | Path,
    attention: str = "auto",
    gelu: str | None = None,
    tolerance: float | None = None,
    quantize: str = "none",
) -> dict:
    """Export a causal LM (folder or in-memory transformers model; `hf_config.ARCHITECTURES`) to `out_dir`;
    returns the manifest. Parity is measured against the transformers model, never our import of it."""
    folder = Path(source) if isinstance(source, (str, Path)) else None
    with step("load checkpoint"):
        model, hf_model = import_checkpoint(source, "causal-lm", gelu=gelu)
        cpm = cpm_tokenizer(folder) if folder else None  # CPM's tokenizer.json (if any) lacks its jieba step
    tokenizer = folder / "tokenizer.json" if folder and not cpm else None

    def reference(ids, types):
        return hf_model(ids).logits

    return export_gpt_bundle(
        model,
        out_dir,
        attention=attention,
        reference=reference,
        reference_name=f"transformers {type(hf_model).__name__}",
        tokenizer_file=tokenizer if tokenizer is not None and tokenizer.is_file() else None,
        other_files={"sentencepiece": folder / "spiece.model"} if cpm else None,
        special_tokens=special_tokens_from_hf(hf_model.config),
        generation={"max_new_tokens": 32, "do_sample": False, "stop_token_ids": stop_tokens_from_hf(hf_model)},
        tolerance=tolerance,
        quantize=quantize,
        extra={"source": {"format": "huggingface", "architecture": type(hf_model).__name__,
                          "path": str(folder) if folder else None}, **({"tokenizer": cpm} if cpm else {})},
    )
