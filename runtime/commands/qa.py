"""`edgeinfer qa`: answer questions from a context or passages with an extractive-QA bundle."""

from __future__ import annotations

import argparse
import json

from ..errors import EdgeInferError, InputError
from ..loader import default_bundle
from ..qa.inputs import MAX_CONTEXT_CHARS, MAX_QUESTIONS, check_texts
from .common import at_least, load_for, read_text

HELP = "answer a question from a context (or a JSON-lines file of them) with an extractive-QA bundle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", default=None, help="bundle folder (default: the shipped BERT reader; "
                        "runtime/bundles/qa-dgcnn is the faster DGCNN reader)")
    parser.add_argument("--question", help="the question")
    parser.add_argument("--context", help="the text to answer from")
    parser.add_argument("--jsonl", metavar="FILE", help='one {"question": ..., "context": ... or "passages": [...]} '
                        "per line in ('-': standard input), one JSON answer per line out")
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=None,
                        help="minimum span probability (default: the bundle's, calibrated on its dev set; "
                             "below it the answer is null)")
    parser.add_argument("--max-context-chars", type=at_least(1), default=None, metavar="N",
                        help=f"refuse a context or passage longer than this (default {MAX_CONTEXT_CHARS:,})")
    parser.add_argument("--max-questions", type=at_least(1), default=None, metavar="N",
                        help=f"refuse a --jsonl file of more questions than this (default {MAX_QUESTIONS:,})")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def _limits(args: argparse.Namespace) -> dict[str, int]:
    """The input limits given on the command line, and nothing else: `Reader.answer`'s defaults fill in the rest."""
    limits = {"max_context_chars": args.max_context_chars, "max_questions": args.max_questions}
    return {name: value for name, value in limits.items() if value is not None}


def _record(record, limits: dict[str, int]) -> tuple[str, list[str]]:
    """(question, passages) of one JSON line, checked like `Reader.answer` checks them; else InputError."""
    if not isinstance(record, dict) or "question" not in record or ("context" in record) == ("passages" in record):
        raise InputError('each line must be a JSON object with "question" and one of "context" or "passages"')
    passages = [[record["context"]]] if "context" in record else [record["passages"]]
    questions, groups = check_texts([record["question"]], passages, None, **limits)
    return questions[0], groups[0]


def _answers(reader, records: list[tuple[str, list[str]]], args: argparse.Namespace) -> list[dict]:
    """One batched `answer` call for every good record; "answer" is the best one, or null when none reached the threshold."""
    answers = reader.answer([q for q, _ in records], [p for _, p in records], top_k=args.top_k,
                            threshold=args.threshold, **_limits(args))
    return [{"question": q, "answer": found[0].to_dict() if found else None, "answers": [a.to_dict() for a in found]}
            for (q, _), found in zip(records, answers, strict=True)]


def _jsonl(reader, args: argparse.Namespace) -> tuple[dict, str]:
    # split at newlines only: str.splitlines would also cut at U+2028 and others, which JSON strings may hold raw
    lines = [line for line in read_text(args.jsonl, "--jsonl file").split("\n") if line.strip()]
    limits = _limits(args)
    out: list[dict | None] = []
    good: dict[int, tuple[str, list[str]]] = {}
    for n, line in enumerate(lines):
        try:
            good[n] = _record(json.loads(line), limits)
            out.append(None)
        except (json.JSONDecodeError, RecursionError) as exc:
            out.append({"line": n + 1, "error": f"not JSON: {exc}", "kind": "InputError"})
        except EdgeInferError as exc:
            out.append({"line": n + 1, "error": str(exc), "kind": type(exc).__name__})
    if good:
        for n, row in zip(good, _answers(reader, list(good.values()), args), strict=True):
            out[n] = row
    text = "\n".join(json.dumps(row, ensure_ascii=False) for row in out)
    return {"results": out}, text


def run(args: argparse.Namespace) -> tuple[dict, str]:
    if (args.jsonl is None) == (args.question is None):
        raise InputError("give --question with --context, or --jsonl FILE")
    if args.question is not None and args.context is None:
        raise InputError("--question needs --context")
    reader = load_for("qa", args.bundle or default_bundle("qa"), ("extractive-qa",), args.device)
    if args.jsonl is not None:
        return _jsonl(reader, args)
    record = _record({"question": args.question, "context": args.context}, _limits(args))
    result = _answers(reader, [record], args)[0]
    text = "\n".join(f"{a['text']}\t{a['score']:.3f}\t[{a['start']}, {a['end']})" for a in result["answers"])
    if not text:
        threshold = reader.defaults.get("threshold") if args.threshold is None else args.threshold
        text = "(no answer" + ("" if threshold is None else f": no span of the context reached the threshold {threshold:.3g}") + ")"
    return result, text
