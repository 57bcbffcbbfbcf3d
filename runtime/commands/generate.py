"""`edgeinfer generate`: continue a prompt with a GPT bundle, streaming tokens as they come."""

from __future__ import annotations

import argparse
import sys

from ..errors import InputError
from .common import DECODER_TASKS, at_least, load_for
from .decoding import add_decoding_arguments, decoding_options

HELP = "generate text from a prompt with a GPT bundle (greedy or sampled, streamed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle folder")
    parser.add_argument("--prompt", required=True, help="prompt text (or space-separated ids with --ids)")
    parser.add_argument("--ids", action="store_true", help="the prompt is token ids, not text")
    add_decoding_arguments(parser)
    parser.add_argument("--seed", type=at_least(0), default=None)
    parser.add_argument("--beams", type=at_least(1), default=1, help="beam search width (1: no beam search)")
    parser.add_argument("--speculate", type=at_least(0), default=0, metavar="K",
                        help="verify up to K draft tokens per decode step (the same greedy output; 0: off)")
    parser.add_argument("--draft", default=None, metavar="BUNDLE",
                        help="draft with this smaller bundle of the same tokenizer (default: prompt lookup)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def token_ids(text: str) -> list[int]:
    """The --ids prompt: space-separated integers (their range is the model's to check)."""
    bad = next((t for t in text.split() if not (t.isascii() and t.isdigit())), None)
    if bad is not None:
        raise InputError(f"--ids takes space-separated token ids (integers >= 0); {bad!r} is not one")
    return [int(t) for t in text.split()]


def run(args: argparse.Namespace) -> tuple[dict, str]:
    prompt = token_ids(args.prompt) if args.ids else args.prompt
    if args.draft is not None and not args.speculate:
        raise InputError("--draft needs --speculate K: the number of draft tokens verified per step")
    if args.speculate and args.beams > 1:
        raise InputError("--speculate drafts for greedy or sampled decoding, not for beam search")
    # a model and its draft take turns on the same cores: idle threads that spin would hold them up
    spinning = False if args.draft is not None else None
    model = load_for("generate", args.bundle, DECODER_TASKS, args.device, spinning)
    options = decoding_options(args)
    if args.draft is not None:
        options["draft"] = load_for("generate --draft", args.draft, DECODER_TASKS, args.device, spinning)
    if args.speculate:
        options["speculate"] = args.speculate
    if args.seed is not None and not args.greedy:
        options.setdefault("do_sample", True)  # a seed asks for sampling
    if args.beams > 1:
        options.pop("do_sample", None)
        result = model.generate([prompt], num_beams=args.beams, **options)[0]
        out = {"token_ids": result.token_ids, "text": result.text, "finish_reason": result.finish_reason,
               "score": result.score, "provider": model.provider}
        return out, result.text if model.tokenizer else " ".join(map(str, result.token_ids))
    events = model.stream([prompt], seed=args.seed, **options)
    ids, text, reason = [], "", "length"
    for event in events:
        ids.append(event.token_id)
        text += event.text
        reason = event.finished or reason
        if not args.json:
            sys.stdout.write(event.text if model.tokenizer else f"{event.token_id} ")
            sys.stdout.flush()
    if not args.json:
        sys.stdout.write("\n")
    return {"token_ids": ids, "text": text, "finish_reason": reason, "provider": model.provider}, ""
