"""Hugging Face checkpoint folder -> bundle, with parity measured against transformers itself."""

from __future__ import annotations

from pathlib import Path

from .hf_import import import_checkpoint, special_tokens_from_hf, stop_tokens_from_hf
from .onnx_export import export_gpt_bundle


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
    model, hf_model = import_checkpoint(source, "causal-lm", gelu=gelu)
    tokenizer = Path(source) / "tokenizer.json" if isinstance(source, (str, Path)) else None

    def reference(ids, types):
        return hf_model(ids).logits

    return export_gpt_bundle(
        model,
        out_dir,
        attention=attention,
        reference=reference,
        reference_name=f"transformers {type(hf_model).__name__}",
        tokenizer_file=tokenizer if tokenizer is not None and tokenizer.is_file() else None,
        special_tokens=special_tokens_from_hf(hf_model.config),
        generation={"max_new_tokens": 32, "do_sample": False, "stop_token_ids": stop_tokens_from_hf(hf_model)},
        tolerance=tolerance,
        quantize=quantize,
        extra={"source": {"format": "huggingface", "architecture": type(hf_model).__name__,
                          "path": str(source) if tokenizer else None}},
    )
