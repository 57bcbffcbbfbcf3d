"""`edgeinfer export`: a Hugging Face checkpoint folder -> a bundle (needs the [export] extra); each step's seconds go
to stderr as it ends (`edgeinfer.export.progress`), the result to stdout."""

from __future__ import annotations

import argparse

from ..errors import InputError

HELP = "export a Hugging Face checkpoint folder to a bundle (needs edgeinfer[export])"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from edgeinfer.export.hf_config import ARCHITECTURES, supported  # torch-free

    parser.add_argument("--from-hf", required=True, metavar="DIR",
                        help=f"local checkpoint folder whose config.json names a supported architecture ({supported()})")
    parser.add_argument("--task", choices=list(ARCHITECTURES), default="causal-lm",
                        help="causal-lm: a decoder (GPT-2, Llama, Qwen2); qa: a BERT, DistilBERT or RoBERTa extractive"
                        " reader; masked-lm: a BERT masked language model")
    parser.add_argument("--out", required=True, metavar="BUNDLE", help="bundle folder to write")
    parser.add_argument("--attention", choices=["auto", "standard", "contrib", "unfused"], default="auto",
                        help="standard: opset-23 Attention (any provider); contrib: onnxruntime GroupQueryAttention"
                        " (decoders, in-place cache) or MultiHeadAttention (encoders); unfused: MatMul/Softmax (decoders, a"
                        " benchmark baseline); auto: contrib when the head size allows")
    parser.add_argument("--gelu", choices=["exact", "tanh", "sigmoid"], default=None,
                        help="GELU form to emit (GPT-2 only; default: the checkpoint's own)")
    parser.add_argument("--quantize", choices=["none", "int8", "int4", "float16"], default="none",
                        help="int8: 8-bit weights, stored as uint8, through DynamicQuantizeMatMul (CPU; about 4x fewer weight"
                        " bytes; `python -m edgeinfer.export.quantize sign` for a VNNI or AMX CPU's kernels); int4:"
                        " 4-bit weights in blocks of 128 through MatMulNBits (about 7x fewer); float16: the graph and"
                        " its KV cache in half precision, logits in float32 (for CUDA, whose GroupQueryAttention"
                        " kernel takes float16 only)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="largest logit error allowed against PyTorch: absolute for fp32 (default 1e-4), relative to"
                        " the largest logit for int8 (default 0.1), int4 (default 0.25) and float16 (default 0.01)")


def run(args: argparse.Namespace) -> tuple[dict, str]:
    from edgeinfer.export.hf_config import read_hf_config
    from edgeinfer.export.progress import reporting, step  # both torch-free

    read_hf_config(args.from_hf, args.task)  # a wrong folder is refused now, not after seconds of torch imports
    try:
        with reporting(), step("import torch and transformers"):
            from edgeinfer.export.bert import (
                export_bert_mlm_bundle,
                export_bert_qa_bundle,
            )
            from edgeinfer.export.hf_bundle import export_hf_checkpoint
    except ImportError as exc:
        raise InputError(f"export needs the [export] extra (pip install 'edgeinfer[export]'): {exc}") from exc
    if args.task in ("qa", "masked-lm"):
        if args.attention == "unfused":
            raise InputError(f"--attention unfused is for decoders; a {args.task} encoder takes standard or contrib")
        export = export_bert_qa_bundle if args.task == "qa" else export_bert_mlm_bundle
        with reporting():
            manifest = export(args.from_hf, args.out, tolerance=args.tolerance, quantize=args.quantize,
                              attention="contrib" if args.attention == "auto" else args.attention)
        text = (
            f"wrote {args.out}: {manifest['source']['architecture']}, {manifest['model']['n_layer']} layers, "
            f"fused ops {manifest['fused_ops']}, "
            f"parity {manifest['parity']['max_abs_diff']:.2e} (tolerance {manifest['parity']['tolerance']:g})"
        )
        return {"bundle": str(args.out), "manifest": manifest}, text
    with reporting():
        manifest = export_hf_checkpoint(args.from_hf, args.out, attention=args.attention, gelu=args.gelu,
                                        tolerance=args.tolerance, quantize=args.quantize)
    parity = manifest["parity"]
    text = (
        f"wrote {args.out}: {manifest['source']['architecture']}, {manifest['model']['n_layer']} layers, "
        f"attention={manifest['attention']}, fused ops {manifest['fused_ops']}, "
        f"parity {parity['max_abs_diff']:.2e} ({parity['tolerance_kind']} tolerance {parity['tolerance']:g}), "
        f"export {manifest['producer']['export_seconds']} s"
    )
    return {"bundle": str(args.out), "manifest": manifest}, text
