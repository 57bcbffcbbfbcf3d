"""Train the DGCNN reader on the QA set from :mod:`edgeinfer.export.qa_data`.

``python -m edgeinfer.export.train_dgcnn --data data/qa --out build/dgcnn`` builds
the vocabularies, trains on (question, passage) pairs on CPU, evaluates on dev
and test with cross-passage answer voting, checks the ONNX export against torch
and writes weights, vocabularies, config, loss curve and metrics to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jieba
import numpy as np
import onnxruntime as ort
import torch
from tqdm import tqdm

from .dgcnn import PAD, UNK, DGCNNConfig, DGCNNReader, encode, reader_loss, vote

MAX_ANSWER = 20


@dataclass
class Pair:
    """One (question, passage) training/evaluation unit; qid groups passages of a question."""

    qid: int
    q: tuple[list[int], list[int]]
    p: tuple[list[int], list[int]]
    starts: list[int]
    ends: list[int]


class Segmenter:
    """jieba with a cache: passages repeat a lot (distractors are shared)."""

    def __init__(self) -> None:
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        self.cache: dict[str, list[str]] = {}

    def __call__(self, text: str) -> list[str]:
        if text not in self.cache:
            self.cache[text] = jieba.lcut(text)
        return self.cache[text]


def load(path: Path) -> list[dict]:
    """Examples of one split, as written by qa_data."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def texts_of(examples: list[dict]) -> Iterator[str]:
    """Distinct questions and passages, in first-seen order (vocab counts each text once)."""
    seen: set[str] = set()
    for ex in examples:
        for text in [ex["question"]] + [p["text"] for p in ex["passages"]]:
            if text not in seen:
                seen.add(text)
                yield text


def build_vocab(counts: Counter[str], min_count: int, max_size: int) -> dict[str, int]:
    """[PAD]=0, [UNK]=1, then the most frequent tokens (ties by token, so it is deterministic)."""
    kept = sorted((t for t, c in counts.items() if c >= min_count and t.strip()), key=lambda t: (-counts[t], t))
    vocab = {"[PAD]": PAD, "[UNK]": UNK}
    for token in kept[: max_size - 2]:
        vocab[token] = len(vocab)
    return vocab


def make_pairs(examples: list[dict], seg: Segmenter, chars: dict[str, int], words: dict[str, int]) -> list[Pair]:
    """Flatten examples to (question, passage) pairs with inclusive start/end target positions."""
    pairs = []
    for qid, ex in enumerate(examples):
        q = encode(seg(ex["question"]), chars, words)
        for p in ex["passages"]:
            starts = [s for s, _ in p["answers"]]
            ends = [e - 1 for _, e in p["answers"]]
            pairs.append(Pair(qid, q, encode(seg(p["text"]), chars, words), starts, ends))
    return pairs


def collate(pairs: list[Pair]) -> dict[str, torch.Tensor]:
    """Pad to the longest question/passage of the batch; pointer targets as 0/1 maps."""
    lq = max(len(p.q[0]) for p in pairs)
    lp = max(len(p.p[0]) for p in pairs)
    out = {k: torch.zeros(len(pairs), n, dtype=torch.long) for k, n in [("q_chars", lq), ("q_words", lq), ("p_chars", lp), ("p_words", lp)]}
    out["starts"] = torch.zeros(len(pairs), lp)
    out["ends"] = torch.zeros(len(pairs), lp)
    for b, pair in enumerate(pairs):
        for key, ids in zip(("q_chars", "q_words", "p_chars", "p_words"), (*pair.q, *pair.p), strict=True):
            out[key][b, : len(ids)] = torch.tensor(ids)
        out["starts"][b, pair.starts] = 1.0
        out["ends"][b, pair.ends] = 1.0
    return out


def batches(pairs: list[Pair], batch_size: int, rng: random.Random) -> list[list[Pair]]:
    """Length-bucketed batches in random order: little padding, still shuffled."""
    order = sorted(pairs, key=lambda p: (len(p.p[0]) + rng.random() * 8))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(chunks)
    return chunks


def epoch_sample(pairs: list[Pair], negatives: int, rng: random.Random) -> list[Pair]:
    """One passage holding the answer and a few answerless ones per question, redrawn each epoch.

    Balanced pairs keep an epoch affordable on one CPU thread while every
    question and, over epochs, most of its passages are still seen.
    """
    by_q: dict[int, list[Pair]] = {}
    for p in pairs:
        by_q.setdefault(p.qid, []).append(p)
    out = []
    for group in by_q.values():
        neg = [p for p in group if not p.starts]
        out += rng.sample([p for p in group if p.starts], 1) + rng.sample(neg, min(negatives, len(neg)))
    return out


def char_f1(pred: str, gold: str) -> float:
    """Character-overlap F1, the usual metric for Chinese extractive QA."""
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def evaluate(model: DGCNNReader, examples: list[dict], pairs: list[Pair], batch_size: int = 128) -> dict[str, float]:
    """EM, character F1 and (EM+F1)/2 with per-passage best spans voted across passages."""
    model.eval()
    probs: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        batch = collate(chunk)
        start, end = model(batch["q_chars"], batch["q_words"], batch["p_chars"], batch["p_words"])
        for b, pair in enumerate(chunk):
            n = len(pair.p[0])
            probs.setdefault(pair.qid, []).append((start[b, :n].numpy(), end[b, :n].numpy()))
    em = f1 = 0.0
    for qid, ex in enumerate(examples):
        pred, _ = vote([p["text"] for p in ex["passages"]], [s for s, _ in probs[qid]], [e for _, e in probs[qid]], MAX_ANSWER)
        em += float(pred == ex["answer"])
        f1 += char_f1(pred, ex["answer"])
    n = max(1, len(examples))
    model.train()
    return {"em": em / n, "f1": f1 / n, "score": (em + f1) / (2 * n), "questions": len(examples)}


def check_onnx(model: DGCNNReader, pairs: list[Pair], path: Path) -> dict[str, float | str]:
    """Export with dynamic batch/lengths and compare onnxruntime with torch on a differently shaped batch."""
    model.eval()
    batch = collate(pairs[:4])
    names = ("q_chars", "q_words", "p_chars", "p_words")
    args = tuple(batch[k] for k in names)
    b, lq, lp = torch.export.Dim("batch"), torch.export.Dim("q_len"), torch.export.Dim("p_len")
    shapes = {"q_chars": {0: b, 1: lq}, "q_words": {0: b, 1: lq}, "p_chars": {0: b, 1: lp}, "p_words": {0: b, 1: lp}}
    torch.onnx.export(model, args, str(path), dynamo=True, dynamic_shapes=shapes, input_names=list(names), output_names=["start_probs", "end_probs"], external_data=False)
    test = collate(pairs[10:17])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: test[k].numpy() for k in names})
    with torch.no_grad():
        want = model(*(test[k] for k in names))
    diff = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want, strict=True))
    return {"onnx_max_abs_diff": diff, "onnx_bytes": path.stat().st_size}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/qa"))
    parser.add_argument("--out", type=Path, default=Path("build/dgcnn"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--negatives", type=int, default=1, help="answerless passages per question per epoch")
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--word-dim", type=int, default=64)
    parser.add_argument("--max-chars", type=int, default=4500)
    parser.add_argument("--max-words", type=int, default=10000)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    data = {split: load(args.data / f"{split}.jsonl") for split in ("train", "dev", "test")}
    seg = Segmenter()
    train_texts = [seg(t) for t in tqdm(list(texts_of(data["train"])), desc="jieba", mininterval=5)]
    chars = build_vocab(Counter(c for ws in train_texts for w in ws for c in w), 2, args.max_chars)
    words = build_vocab(Counter(w for ws in train_texts for w in ws), 3, args.max_words)
    pairs = {split: make_pairs(exs, seg, chars, words) for split, exs in data.items()}

    config = DGCNNConfig(len(chars), len(words), dim=args.dim, word_dim=args.word_dim)
    model = DGCNNReader(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    plan = [batches(epoch_sample(pairs["train"], args.negatives, rng), args.batch_size, rng) for _ in range(args.epochs)]
    total = sum(len(p) for p in plan)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 200) * max(0.05, 1 - step / total))

    curve: list[dict[str, float]] = []
    running, step, started = 0.0, 0, time.time()
    with tqdm(total=total, desc="train", mininterval=10) as bar:
        for epoch, epoch_batches in enumerate(plan):
            for chunk in epoch_batches:
                loss = reader_loss(model, collate(chunk))
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
                scheduler.step()
                running += loss.item()
                step += 1
                bar.update()
                if step % args.log_every == 0:
                    curve.append({"step": step, "epoch": epoch, "loss": running / args.log_every, "seconds": round(time.time() - started, 1)})
                    bar.set_postfix(loss=f"{running / args.log_every:.4f}")
                    running = 0.0
    train_seconds = time.time() - started

    torch.save(model.state_dict(), args.out / "model.pt")
    (args.out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    (args.out / "vocab.json").write_text(json.dumps({"chars": chars, "words": words}, ensure_ascii=False))
    (args.out / "loss.json").write_text(json.dumps(curve))
    metrics: dict = {split: evaluate(model, data[split], pairs[split]) for split in ("dev", "test")}
    metrics |= {
        "train_seconds": round(train_seconds, 1),
        "steps": step,
        "train_questions": len(data["train"]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "model_bytes": (args.out / "model.pt").stat().st_size,
        **check_onnx(model, pairs["dev"], args.out / "dgcnn.onnx"),
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
