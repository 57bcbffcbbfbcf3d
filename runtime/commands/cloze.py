"""`edgeinfer cloze`: classify texts with a masked-LM bundle, a pattern and label words (PET's cloze questions)."""

from __future__ import annotations

import argparse
import json

from ..cloze import SCORINGS
from ..errors import InputError
from .common import at_least, load_for, read_text

HELP = "classify texts with a masked-LM bundle by the label word it puts in a pattern's ___ slot"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, help="a masked-LM bundle folder")
    parser.add_argument("--pattern", required=True, help="text with one ___ slot and optionally {text}, where the "
                        "input goes (without it the pattern follows the text), e.g. '{text}这是___事。'")
    parser.add_argument("--label", action="append", required=True, metavar="WORD=NAME",
                        help="a label word and the label it stands for, e.g. 好=positive (repeat for each)")
    parser.add_argument("--text", action="append", help="a text to classify (repeatable)")
    parser.add_argument("--jsonl", metavar="FILE", help='one {"text": ...} per line in (\'-\': standard input), '
                        "one JSON result per line out")
    parser.add_argument("--scoring", choices=SCORINGS, default="product",
                        help="multi-token label words: product of per-mask probabilities, or conditional filling")
    parser.add_argument("--batch-size", type=at_least(1), default=32, metavar="N", help="rows per model call")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """WORD=NAME options -> {word: name}; a malformed or repeated word is refused."""
    labels: dict[str, str] = {}
    for pair in pairs:
        word, sep, name = pair.partition("=")
        if not sep or not word.strip() or not name.strip():
            raise InputError(f"--label wants WORD=NAME with both non-empty, got {pair!r}")
        if word in labels:
            raise InputError(f"label word {word!r} is given twice")
        labels[word] = name.strip()
    return labels


def _jsonl_texts(path: str) -> tuple[list[str], list[dict | None]]:
    """The texts of a JSON-lines file and, per line, None or the error that line gets."""
    texts, out = [], []
    for n, line in enumerate(x for x in read_text(path, "--jsonl file").split("\n") if x.strip()):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            out.append({"line": n + 1, "error": f"not JSON: {exc}", "kind": "InputError"})
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            out.append({"line": n + 1, "error": 'each line must be a JSON object with a "text" string',
                        "kind": "InputError"})
            continue
        texts.append(record["text"])
        out.append(None)
    return texts, out


def run(args: argparse.Namespace) -> tuple[dict, str]:
    if (args.jsonl is None) == (args.text is None):
        raise InputError("give --text TEXT (repeatable) or --jsonl FILE")
    labels = parse_labels(args.label)
    texts, out = (args.text, [None] * len(args.text)) if args.jsonl is None else _jsonl_texts(args.jsonl)
    model = load_for("cloze", args.bundle, ("masked-lm",), args.device)
    found = model.cloze(texts, pattern=args.pattern, labels=labels, scoring=args.scoring,
                        batch_size=args.batch_size) if texts else []
    results = iter({"text": t, **c.to_dict()} for t, c in zip(texts, found, strict=True))
    rows = [row if row is not None else next(results) for row in out]
    if args.jsonl is not None:
        return {"results": rows}, "\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
    text = "\n".join(f"{r['label']}\t{r['scores'][r['label']]:.3f}\t{r['text']}" for r in rows)
    return {"results": rows}, text
