"""Dialogue bundle: distinct-1/2 of replies to held-out contexts, and first-token / per-token latency.

    python benchmarks/chat_quality.py --bundle runtime/bundles/chat [--contexts 100] [--seed 0]

Contexts are the first turns of test-split conversations (data/chat/test.npz, as `chat_data` wrote it); each reply
is sampled with the bundle's defaults (top-k 5) and a fixed seed. distinct-n = distinct n-grams / all n-grams over
all replies (tokens). Latency is measured around `Chat.stream`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np

import edgeinfer
from edgeinfer.chat import Chat


def contexts(path: Path, count: int, tokenizer) -> list[list[str]]:
    """Utterance lists from test examples: split at [SEP], keep all but the last turn as the context."""
    with np.load(path) as data:
        ids, offsets = data["input_ids"], data["offsets"]
    out = []
    for a, b in itertools.pairwise(offsets):
        turns, current = [], []
        for token in ids[a + 1 : b]:  # skip [CLS]
            if token == 102:
                turns.append(tokenizer.decode(current))
                current = []
            else:
                current.append(int(token))
        if len(turns) >= 2:
            out.append(turns[: min(len(turns) - 1, 3)])
        if len(out) == count:
            break
    return out


def distinct(replies: list[list[str]], n: int) -> float:
    grams = [tuple(r[i : i + n]) for r in replies for i in range(len(r) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def measure(model, histories: list[list[str]], seed: int = 0) -> dict:
    """Reply to each history's last message with the bundle's sampling defaults; diversity and latency figures."""
    replies, first_ms, per_token_ms = [], [], []
    for i, history in enumerate(histories):
        chat = Chat(model, seed=seed + i, history=history[:-1])
        start = time.perf_counter()
        pieces, first = [], None
        for piece in chat.stream(history[-1]):
            first = first or time.perf_counter()
            pieces.append(piece)
        end = time.perf_counter()
        tokens = model.tokenizer.encode("".join(pieces), add_special_tokens=False).tokens
        replies.append(tokens)
        if first is not None:
            first_ms.append(1e3 * (first - start))
            if len(tokens) > 1:
                per_token_ms.append(1e3 * (end - first) / (len(tokens) - 1))
    return {
        "bundle": str(model.folder),
        "contexts": len(replies),
        "distinct_1": round(distinct(replies, 1), 4),
        "distinct_2": round(distinct(replies, 2), 4),
        "mean_reply_tokens": round(statistics.mean(len(r) for r in replies), 2),
        "first_token_ms_median": round(statistics.median(first_ms), 2) if first_ms else None,
        "per_token_ms_median": round(statistics.median(per_token_ms), 2) if per_token_ms else None,
        "first_token_ms": first_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data", default="data/chat/test.npz", type=Path)
    parser.add_argument("--contexts", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = edgeinfer.load(args.bundle, device="cpu")
    result = measure(model, contexts(args.data, args.contexts, model.tokenizer), args.seed)
    result.pop("first_token_ms")
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
