"""Export a small random-weight GPT-2 (built here, nothing downloaded) to a bundle: the quick-start job."""

from __future__ import annotations

import argparse

from .hf_bundle import export_hf_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="bundle folder to write")
    parser.add_argument("--attention", choices=["auto", "standard", "contrib"], default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(args.seed)
    config = GPT2Config(vocab_size=1000, n_positions=256, n_embd=128, n_layer=4, n_head=4)
    manifest = export_hf_checkpoint(GPT2LMHeadModel(config).eval(), args.out, attention=args.attention)
    print(f"wrote {args.out}: fused {manifest['fused_ops']}, parity {manifest['parity']['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
