"""`edgeinfer info`: validate a bundle and say what it holds."""

from __future__ import annotations

import argparse

from ..loader import load

HELP = "validate a bundle, open it, and print its manifest summary"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle folder")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def run(args: argparse.Namespace) -> tuple[dict, str]:
    model = load(args.bundle, device=args.device)
    manifest = model.manifest
    result = {
        "bundle": str(args.bundle),
        "task": manifest["task"],
        "provider": model.provider,
        "provider_reason": model.providers.reason,
        "fused_ops": manifest.get("fused_ops", {}),
        "attention": manifest.get("attention"),
        "parity": manifest["parity"],
        "model": manifest.get("model", {}),
    }
    lines = [f"{k}: {v}" for k, v in result.items()]
    return result, "\n".join(lines)
