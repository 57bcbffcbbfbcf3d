"""Build the multi-turn dialogue training data in the seed layout (``edgeinfer.chat.format``).

Sources, read offline from installed packages (``pip install chitchat-dataset`` and
``pip install --no-deps chatterbot-corpus pyyaml``):

* ``chitchat``: the Chit-Chat Challenge conversations. Consecutive messages of one sender form
  one turn (joined with a space). Conversations with fewer than two turns have no reply to learn
  and are dropped.
* ``chatterbot_zh``: every ``conversations:`` entry of ``chatterbot_corpus/data/chinese/*.yml``.

Conversations are split per source into train/valid/test by a seeded shuffle, so no
conversation straddles splits. Each example is a whole conversation. One that does not fit
``max_len`` is cut greedily into non-overlapping windows of consecutive whole turns, each laid
out afresh (own ``[CLS]``, segment alternation restarted at its first turn, as truncation does
at inference). A single turn longer than ``max_len - 2`` tokens becomes its own window, cut from
the left like ``chat_format.fit_turns``.

Output in ``--out``: ``{train,valid,test}.npz`` holding ragged examples flat:
``input_ids`` (int16: the vocabulary is under 32k) and ``segment_ids`` (int8) concatenated, ``offsets`` (int64, example
``i`` is ``[offsets[i], offsets[i+1])``), ``source`` (int8 index into ``sources``),
``conversation`` (int32 index into ``conversation_ids``); plus ``tokenizer.json`` (WordPiece trained on the
train split's utterances, ``chat_tokenizer``) and ``stats.json``. These files are all that training reads.
Run: ``python -m edgeinfer.export.chat_data --out data/chat``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from edgeinfer.chat.format import assemble, encode_turns, fit_turns, special_ids

from .chat_tokenizer import UNK_TOKEN, VOCAB_SIZE, train_tokenizer

SOURCES = ("chitchat", "chatterbot_zh")
SPLITS = ("train", "valid", "test")
HELD_OUT_FRACTION = 0.03  # each of valid and test; train gets the rest (94/3/3)


@dataclass(frozen=True)
class Conversation:
    """One dialogue, oldest utterance first; the id is kept so examples can be traced back."""

    source: str
    conversation_id: str
    utterances: list[str]


@dataclass
class SplitData:
    """Examples of one split, accumulated before being written flat."""

    examples: list[tuple[list[int], list[int]]] = field(default_factory=list)
    source: list[int] = field(default_factory=list)
    conversation: list[int] = field(default_factory=list)
    conversation_ids: list[str] = field(default_factory=list)


def load_chitchat() -> list[Conversation]:
    """Chit-Chat conversations with at least two turns, in file order."""
    raw = json.loads((files("chitchat_dataset") / "dataset.json").read_text(encoding="utf-8"))
    conversations = []
    for conv_id, conv in raw.items():
        turns = [" ".join(m["text"].strip() for m in turn) for turn in conv["messages"]]
        if len(turns) >= 2:
            conversations.append(Conversation("chitchat", conv_id, turns))
    return conversations


def load_chatterbot_chinese() -> list[Conversation]:
    """Every conversation of the simplified-Chinese chatterbot corpus, files in name order."""
    import yaml  # needed only for this source

    folder = files("chatterbot_corpus") / "data" / "chinese"
    conversations = []
    for path in sorted((p for p in folder.iterdir() if p.name.endswith(".yml")), key=lambda p: p.name):
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]
        for i, entry in enumerate(entries):
            turns = [str(u).strip() for u in entry]
            if len(turns) >= 2:
                conversations.append(Conversation("chatterbot_zh", f"{path.name[:-4]}:{i}", turns))
    return conversations


def split_conversations(conversations: list[Conversation], seed: int) -> dict[str, list[Conversation]]:
    """Seeded shuffle per source, then cut 94/3/3 so every split holds both sources."""
    rng = np.random.default_rng(seed)
    splits: dict[str, list[Conversation]] = {name: [] for name in SPLITS}
    for source in SOURCES:
        group = [c for c in conversations if c.source == source]
        order = rng.permutation(len(group))
        n_held = round(len(group) * HELD_OUT_FRACTION)
        cuts = {"valid": order[:n_held], "test": order[n_held:2 * n_held], "train": order[2 * n_held:]}
        for name in SPLITS:
            splits[name].extend(group[i] for i in sorted(cuts[name]))
    return splits


def windows(turns: list[list[int]], max_len: int) -> list[list[list[int]]]:
    """Cut tokenized turns greedily into windows whose layout fits ``max_len``."""
    out: list[list[list[int]]] = []
    current: list[list[int]] = []
    used = 1  # [CLS]
    for turn in turns:
        if current and used + len(turn) + 1 > max_len:
            out.append(current)
            current, used = [], 1
        if not current and 1 + len(turn) + 1 > max_len:
            out.append(fit_turns([turn], max_len))
            continue
        current.append(turn)
        used += len(turn) + 1
    if current:
        out.append(current)
    return out


def build_split(
    tokenizer: Tokenizer, conversations: list[Conversation], max_len: int, desc: str
) -> tuple[SplitData, dict[str, dict[str, float]]]:
    """Tokenize and window one split; returns the examples and per-source counts.

    ``tokens`` counts every id written ([CLS]/[SEP] included); ``cut_turns`` counts turns
    longer than a window, cut from the left.
    """
    cls_id, sep_id = special_ids(tokenizer)
    unk_id = tokenizer.token_to_id(UNK_TOKEN)
    data = SplitData()
    keys = ("conversations", "turns", "examples", "tokens", "unk_tokens", "cut_turns")
    counts = {s: dict.fromkeys(keys, 0) for s in SOURCES}
    for conv in tqdm(conversations, desc=desc, unit="conv"):
        turns = encode_turns(tokenizer, conv.utterances)
        stat = counts[conv.source]
        stat["conversations"] += 1
        stat["turns"] += len(turns)
        stat["cut_turns"] += sum(len(t) + 2 > max_len for t in turns)
        data.conversation_ids.append(f"{conv.source}/{conv.conversation_id}")
        for window in windows(turns, max_len):
            input_ids, segment_ids = assemble(window, cls_id, sep_id)
            data.examples.append((input_ids, segment_ids))
            data.source.append(SOURCES.index(conv.source))
            data.conversation.append(len(data.conversation_ids) - 1)
            stat["examples"] += 1
            stat["tokens"] += len(input_ids)
            stat["unk_tokens"] += input_ids.count(unk_id)
    for stat in counts.values():
        stat["mean_turns"] = round(stat["turns"] / stat["conversations"], 2) if stat["conversations"] else 0.0
    return data, counts


def save_split(path: Path, data: SplitData) -> None:
    """Write one split as flat arrays plus offsets (no pickled objects)."""
    lengths = [len(ids) for ids, _ in data.examples]
    np.savez_compressed(
        path,
        input_ids=np.fromiter((t for ids, _ in data.examples for t in ids), dtype=np.int16),
        segment_ids=np.fromiter((s for _, segs in data.examples for s in segs), dtype=np.int8),
        offsets=np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]),
        source=np.asarray(data.source, dtype=np.int8),
        conversation=np.asarray(data.conversation, dtype=np.int32),
        sources=np.asarray(SOURCES),
        conversation_ids=np.asarray(data.conversation_ids),
    )


def build(out: Path, max_len: int, seed: int, vocab_size: int = VOCAB_SIZE) -> dict:
    """Produce every file of the data set in ``out`` and return the stats written."""
    out.mkdir(parents=True, exist_ok=True)
    splits = split_conversations(load_chitchat() + load_chatterbot_chinese(), seed)
    tokenizer = train_tokenizer((u for conv in splits["train"] for u in conv.utterances), vocab_size)
    tokenizer.save(str(out / "tokenizer.json"))
    stats: dict = {"max_len": max_len, "seed": seed, "vocab_size": tokenizer.get_vocab_size(), "splits": {}}
    for name in SPLITS:
        data, counts = build_split(tokenizer, splits[name], max_len, desc=name)
        save_split(out / f"{name}.npz", data)
        stats["splits"][name] = counts
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/chat"))
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = parser.parse_args(argv)
    build(args.out, args.max_len, args.seed, args.vocab_size)


if __name__ == "__main__":
    main()
