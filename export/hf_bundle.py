"""Hugging Face checkpoint folder -> bundle, with parity measured against transformers itself."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .hf_import import import_checkpoint, special_tokens_from_hf, stop_tokens_from_hf
from .hf_tokenizer import chat_template, tokenizer_config, tokenizer_json
from .onnx_export import export_gpt_bundle
from .progress import step

CPM_TOKENIZERS = ("CpmTokenizer", "CpmTokenizerFast")


def cpm_tokenizer(folder: Path) -> dict | None:
    """The manifest `tokenizer` block of a checkpoint folder whose tokenizer is CPM's (tokenizer_config.json names
    CpmTokenizer and spiece.model is there), else None; read through transformers' own CpmTokenizer, so the added
    tokens and their ids are the ones transformers uses (`edgeinfer.cpm` has the algorithm)."""
    if not (folder / "spiece.model").is_file() or tokenizer_config(folder).get("tokenizer_class") not in CPM_TOKENIZERS:
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

    def reference(ids, types):
        return hf_model(ids).logits

    other_files = {"sentencepiece": folder / "spiece.model"} if cpm else {}
    extra = {"source": {"format": "huggingface", "architecture": type(hf_model).__name__,
                        "path": str(folder) if folder else None}, **({"tokenizer": cpm} if cpm else {})}
    with tempfile.TemporaryDirectory() as work:
        tokenizer = tokenizer_json(folder, Path(work)) if folder and not cpm else None
        template = chat_template(folder, Path(work)) if folder else None
        if template is not None:
            other_files["chat_template"] = template[0]
            extra["chat_template_tokens"] = template[1]
        return export_gpt_bundle(
            model,
            out_dir,
            attention=attention,
            reference=reference,
            reference_name=f"transformers {type(hf_model).__name__}",
            tokenizer_file=tokenizer,
            other_files=other_files,
            special_tokens=special_tokens_from_hf(hf_model.config),
            generation={"max_new_tokens": 32, "do_sample": False, "stop_token_ids": stop_tokens_from_hf(hf_model)},
            tolerance=tolerance,
            quantize=quantize,
            extra=extra,
        )
