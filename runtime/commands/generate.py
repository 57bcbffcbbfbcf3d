"""`edgeinfer generate`: continue a prompt with a GPT bundle, streaming tokens as they come."""

from __future__ import annotations

import argparse
import sys

from ..loader import load

HELP = "generate text from a prompt with a GPT bundle (greedy or sampled, streamed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", help="bundle folder")
    parser.add_argument("--prompt", required=True, help="prompt text (or space-separated ids with --ids)")
    parser.add_argument("--ids", action="store_true", help="the prompt is token ids, not text")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--greedy", action="store_true", help="argmax decoding (the default unless sampling options)")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--beams", type=int, default=1, help="beam search width (1: no beam search)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def run(args: argparse.Namespace) -> tuple[dict, str]:
    model = load(args.bundle, device=args.device)
    prompt = [int(t) for t in args.prompt.split()] if args.ids else args.prompt
    if args.beams > 1:
        result = model.generate([prompt], num_beams=args.beams, max_new_tokens=args.max_new_tokens,
                                repetition_penalty=args.repetition_penalty)[0]
        out = {"token_ids": result.token_ids, "text": result.text, "finish_reason": result.finish_reason,
               "score": result.score, "provider": model.provider}
        return out, result.text if model.tokenizer else " ".join(map(str, result.token_ids))
    sampling = not args.greedy and (args.top_k > 0 or args.top_p < 1.0 or args.temperature != 1.0 or args.seed is not None)
    events = model.stream(
        [prompt],
        max_new_tokens=args.max_new_tokens,
        do_sample=sampling,
        top_k=args.top_k,
        top_p=args.top_p,
        temperature=args.temperature,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
    )
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
