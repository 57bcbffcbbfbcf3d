"""Dialogue bundle quality: held-out bits per character, message sensitivity, diversity, the reply goals, latency.

    python benchmarks/chat_quality.py --bundle runtime/bundles/chat [--out results.json]

Every figure is tokenizer-independent, so bundles with different vocabularies compare:

* `bits_per_char`: cross-entropy of each held-out reply (and its closing [SEP]) given its real context, in bits
  per character of the reply, per language; test-split conversations as `edgeinfer.export.chat_data` splits them.
* `context_gain_bits_per_char`: how much worse the same replies score after another conversation's context
  (same language): 0 means the reply ignores the message.
* `first_token_tv`: mean total variation between the first-reply-token distributions of every pair of the goal
  messages of one language (the issue measured 0.06-0.37 on the BERT-vocabulary model).
* `distinct_1`/`distinct_2`: distinct unigrams/bigrams over all replies to test contexts (words: Latin runs and
  single CJK characters), sampled with the bundle's defaults.
* `goals`: twelve varied messages per language, each answered by a fresh `Chat` with seed 0 and the bundle's
  defaults: how many distinct replies, how many in the message's language, how many cut short at max_new_tokens.
  The goals are at least 10 of 12 distinct, 12 of 12 in the language, none cut short.
* `two_turn`: a few two-message conversations, printed for reading (does the second reply follow the first turn?).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import statistics
import time
from pathlib import Path

import numpy as np

import edgeinfer
from edgeinfer.chat import Chat
from edgeinfer.chat.format import encode_dialogue
from edgeinfer.export.chat_data import (
    load_chatterbot_chinese,
    load_chitchat,
    split_conversations,
)

MESSAGES = {
    "en": ["Hi, how are you today?", "What is your favorite movie?", "Do you have any pets?",
           "Where did you grow up?", "What do you do for work?", "I just got back from a trip to Japan.",
           "What kind of music do you like?", "Do you like to cook?", "What are your plans for the weekend?",
           "I'm feeling really tired today.", "Have you read any good books lately?", "Is it raining where you are?"],
    "zh": ["你好", "你叫什么名字？", "你喜欢看什么电影？", "今天天气怎么样？", "你会做饭吗？", "我今天很累。",
           "你喜欢音乐吗？", "你是机器人吗？", "你住在哪里？", "给我讲个笑话吧。", "你最喜欢吃什么？", "你有朋友吗？"],
}
TWO_TURN = {
    "en": [("Hi! My name is Anna.", "Do you remember my name?"), ("I have a new puppy.", "What should I name him?"),
           ("I love pizza.", "What is your favorite food?")],
    "zh": [("你好，我叫小明。", "你记得我的名字吗？"), ("我有一只猫。", "你喜欢猫吗？"), ("我喜欢看电影。", "你呢？")],
}
CJK = re.compile(r"[\u3400-\u9fff]")
WORDS = re.compile(r"[\u3400-\u9fff]|[A-Za-z0-9']+")
LETTERS = re.compile(r"[A-Za-z]")


def language(text: str) -> str:
    """"zh" when CJK characters hold their own against Latin letters (one character to four letters, about a word
    each), "en" when there are Latin letters, else "none"."""
    cjk, latin = len(CJK.findall(text)), len(LETTERS.findall(text))
    return "zh" if cjk and cjk >= latin / 4 else "en" if latin else "none"  # 4: about four letters per word


def words(text: str) -> list[str]:
    return WORDS.findall(text.lower())


def distinct(replies: list[list[str]], n: int) -> float:
    grams = [tuple(r[i : i + n]) for r in replies for i in range(len(r) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def test_pairs(per_language: int, seed: int) -> dict[str, list[tuple[list[str], str]]]:
    """(context of up to three turns, reply) from test-split conversations, one pair per conversation."""
    test = split_conversations(load_chitchat() + load_chatterbot_chinese(), seed=0)["test"]
    rng = np.random.default_rng(seed)
    pairs: dict[str, list] = {"en": [], "zh": []}
    for conv in test:
        lang = "zh" if conv.source == "chatterbot_zh" else "en"
        end = int(rng.integers(1, len(conv.utterances)))
        pairs[lang].append((conv.utterances[max(0, end - 3) : end], conv.utterances[end]))
    return {lang: p[:per_language] for lang, p in pairs.items()}


def reply_bits(model, context: list[str], reply: str) -> float:
    """Bits the model spends on `reply` and its closing [SEP] after `context`."""
    ids, segments = encode_dialogue(model.tokenizer, [*context, reply], model.max_positions)
    n_reply = len(model.tokenizer.encode(reply, add_special_tokens=False).ids) + 1
    n_reply = min(n_reply, len(ids) - 1)
    logits = model.logits([ids], token_type_ids=[segments])[0].astype(np.float64)
    logits -= logits.max(axis=-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    positions = np.arange(len(ids) - 1 - n_reply, len(ids) - 1)
    return float(-logp[positions, np.asarray(ids)[positions + 1]].sum() / math.log(2))


def likelihood_figures(model, pairs: dict[str, list[tuple[list[str], str]]]) -> dict:
    out = {}
    for lang, items in pairs.items():
        chars = sum(len(reply.replace(" ", "")) + 1 for _, reply in items)  # +1: the end of the reply
        true = sum(reply_bits(model, ctx, reply) for ctx, reply in items)
        other = [items[(i + 1) % len(items)][0] for i in range(len(items))]
        shuffled = sum(reply_bits(model, ctx, reply) for ctx, (_, reply) in zip(other, items))
        out[lang] = {"pairs": len(items), "bits_per_char": round(true / chars, 4),
                     "context_gain_bits_per_char": round((shuffled - true) / chars, 4)}
    return out


def first_token_tv(model, messages: list[str]) -> float:
    """Mean pairwise total variation of the first reply token's distribution (temperature 1)."""
    dists = []
    for message in messages:
        ids, segments = encode_dialogue(model.tokenizer, [message], model.max_positions)
        logits = model.logits([ids], token_type_ids=[segments])[0, -1].astype(np.float64)
        p = np.exp(logits - logits.max())
        dists.append(p / p.sum())
    return round(statistics.mean(0.5 * np.abs(a - b).sum() for a, b in itertools.combinations(dists, 2)), 4)


def goals(model, messages: dict[str, list[str]]) -> dict:
    out = {}
    for lang, texts in messages.items():
        replies, cut = [], 0
        for message in texts:
            chat = Chat(model, seed=0)
            replies.append(chat.reply(message))
            cut += chat.finish_reason != "stop_token" or not replies[-1]
        out[lang] = {"distinct": len(set(replies)), "in_language": sum(language(r) == lang for r in replies),
                     "cut_short": cut, "messages": len(texts), "replies": dict(zip(texts, replies)),
                     "first_token_tv": first_token_tv(model, texts)}
        out[lang]["met"] = out[lang]["distinct"] >= 10 and out[lang]["in_language"] == len(texts) and cut == 0
    return out


def two_turn(model, seed: int) -> dict[str, list[list[str]]]:
    out = {}
    for lang, conversations in TWO_TURN.items():
        out[lang] = []
        for first, second in conversations:
            chat = Chat(model, seed=seed)
            chat.reply(first)
            chat.reply(second)
            out[lang].append(chat.history)
    return out


def measure(model, histories: list[list[str]], seed: int = 0) -> dict:
    """Reply to each history's last message with the bundle's sampling defaults: distinct-n (words) and latency
    around `Chat.stream` (`benchmarks/suite.py` reports these for the dialogue job)."""
    replies, n_tokens, first_ms, per_token_ms = [], [], [], []
    for i, history in enumerate(histories):
        chat = Chat(model, seed=seed + i, history=history[:-1])
        start, first, pieces = time.perf_counter(), None, []
        for piece in chat.stream(history[-1]):
            first = first or time.perf_counter()
            pieces.append(piece)
        end = time.perf_counter()
        replies.append(words("".join(pieces)))
        n_tokens.append(len(model.tokenizer.encode("".join(pieces), add_special_tokens=False).ids))
        if first is not None:
            first_ms.append(1e3 * (first - start))
            if n_tokens[-1] > 1:
                per_token_ms.append(1e3 * (end - first) / (n_tokens[-1] - 1))
    return {"bundle": str(model.folder), "contexts": len(replies), "distinct_1": round(distinct(replies, 1), 4),
            "distinct_2": round(distinct(replies, 2), 4), "mean_reply_tokens": round(statistics.mean(n_tokens), 2),
            "first_token_ms_median": round(statistics.median(first_ms), 2) if first_ms else None,
            "per_token_ms_median": round(statistics.median(per_token_ms), 2) if per_token_ms else None,
            "first_token_ms": first_ms}


def report(model, pairs_per_language: int = 200, seed: int = 0) -> dict:
    """Every figure of this module for one bundle."""
    pairs = test_pairs(pairs_per_language, seed)
    contexts = [ctx for lang in ("en", "zh") for ctx, _ in pairs[lang][:50] if ctx]
    sampled = measure(model, contexts, seed)
    sampled.pop("first_token_ms")
    return {"bundle": str(model.folder), "generation": model.manifest.get("generation", {}),
            "n_parameters": model.manifest["model"].get("n_parameters"),
            "likelihood": likelihood_figures(model, pairs), "goals": goals(model, MESSAGES),
            "diversity": sampled, "two_turn": two_turn(model, seed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--pairs", type=int, default=200, help="held-out (context, reply) pairs per language, at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    model = edgeinfer.load(args.bundle, device="cpu")
    result = report(model, args.pairs, args.seed)
    text = json.dumps(result, ensure_ascii=False, indent=1)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
