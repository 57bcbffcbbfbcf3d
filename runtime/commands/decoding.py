"""Decoding options shared by the `generate` and `chat` subcommands; unset ones take the bundle's defaults."""

from __future__ import annotations

import argparse


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the bundle's generation block")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--greedy", action="store_true", help="argmax decoding")
    group.add_argument("--sample", action="store_true", help="sampling (implied by --top-k/--top-p/--temperature)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=None)


def decoding_options(args: argparse.Namespace) -> dict:
    """The options given on the command line, and nothing else: the bundle's manifest fills in the rest."""
    options = {"max_new_tokens": args.max_new_tokens, "top_k": args.top_k, "top_p": args.top_p,
               "temperature": args.temperature, "repetition_penalty": args.repetition_penalty}
    options = {k: v for k, v in options.items() if v is not None}
    if args.greedy:
        options["do_sample"] = False
    elif args.sample or {"top_k", "top_p", "temperature"} & set(options):
        options["do_sample"] = True
    return options
