"""Hugging Face checkpoint folder -> bundle, with parity measured against transformers itself."""

from __future__ import annotations

from pathlib import Path

from .hf_import import gpt_from_hf, load_hf_gpt2, special_tokens_from_hf
from .onnx_export import export_gpt_bundle


def export_hf_checkpoint(
    source,
    out_dir: str | Path,
    attention: str = "auto",
    gelu: str | None = None,
    tolerance: float | None = None,
    quantize: str = "none",
) -> dict:
    """Export a GPT2LMHeadModel (folder or in-memory model) to `out_dir`; returns the manifest."""
    hf_model = load_hf_gpt2(source)
    model = gpt_from_hf(hf_model, gelu=gelu)
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
        generation={"max_new_tokens": 32, "do_sample": False},
        tolerance=tolerance,
        quantize=quantize,
        extra={"source": {"format": "huggingface", "path": str(source) if tokenizer else None}},
    )
