"""Train the DGCNN reader on the QA set from :mod:`edgeinfer.export.qa_data`, on CPU or GPU.

``python -m edgeinfer.export.train_dgcnn --data data/qa --work build/dgcnn --device cpu|cuda`` reads only
``data/qa/segmented.json.xz`` (texts already segmented by jieba, so no jieba here), builds the vocabularies
from the training split, trains on (question, passage) pairs, calibrates the no-answer threshold on dev
and reports dev, test and the held-out source (ood) separately. It writes ``model.pt`` (state dict and
config), ``vocab.json`` and ``training.json`` (command, loss curve, threshold, metrics) into ``--work``;
``python -m edgeinfer.export.qa_bundle --from build/dgcnn`` turns that into a bundle.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgeinfer.qa.spans import top_spans, vote_totals

from .dgcnn import PAD, UNK, DGCNNConfig, DGCNNReader, encode, reader_loss
from .qa_data import char_f1, reading_share
from .qa_questions import MAX_ANSWER, MAX_QUESTION
from .qa_reading import MAX_PASSAGE
from .qa_segment import load

MAX_SPANS = 4  # answer occurrences kept per passage


@dataclass
class Encoded:
    """Every text as padded char and word ids (n_texts, MAX_PASSAGE) and its length."""

    chars: np.ndarray
    words: np.ndarray
    lengths: np.ndarray


@dataclass
class Pairs:
    """(question, passage) rows of one split: text ids, answer spans (-1 padded) and question index."""

    question: np.ndarray
    passage: np.ndarray
    spans: np.ndarray
    qid: np.ndarray

    @property
    def answered(self) -> np.ndarray:
        return self.spans[:, 0, 0] >= 0


def build_vocab(counts: Counter[str], min_count: int, max_size: int) -> dict[str, int]:
    """[PAD]=0, [UNK]=1, then the most frequent tokens (ties by token, so it is deterministic)."""
    kept = sorted((t for t, c in counts.items() if c >= min_count and t.strip()), key=lambda t: (-counts[t], t))
    vocab = {"[PAD]": PAD, "[UNK]": UNK}
    for token in kept[: max_size - 2]:
        vocab[token] = len(vocab)
    return vocab


def train_texts(examples: list[dict]) -> set[int]:
    return {i for ex in examples for i in [ex["q"], *(p[0] for p in ex["passages"])]}


def encode_texts(texts: list[list[str]], chars: dict[str, int], words: dict[str, int]) -> Encoded:
    """Ids of every text, cut at MAX_PASSAGE characters (questions are cut at MAX_QUESTION when batched)."""
    dtype = np.int16 if max(len(chars), len(words)) < 2**15 else np.int32
    out = Encoded(np.zeros((len(texts), MAX_PASSAGE), dtype), np.zeros((len(texts), MAX_PASSAGE), dtype),
                  np.zeros(len(texts), np.int64))
    for i, ws in enumerate(tqdm(texts, desc="encode", mininterval=5)):
        c, w = encode(ws, chars, words)
        n = min(len(c), MAX_PASSAGE)
        out.chars[i, :n], out.words[i, :n], out.lengths[i] = c[:n], w[:n], n
    return out


def make_pairs(examples: list[dict]) -> Pairs:
    rows = [(qid, ex["q"], p) for qid, ex in enumerate(examples) for p in ex["passages"]]
    spans = np.full((len(rows), MAX_SPANS, 2), -1, np.int64)
    for r, (_, _, (_, answers)) in enumerate(rows):
        for k, (s, e) in enumerate(answers[:MAX_SPANS]):
            spans[r, k] = s, e - 1
    return Pairs(np.array([q for _, q, _ in rows]), np.array([p[0] for *_, p in rows]), spans,
                 np.array([qid for qid, *_ in rows]))


def collate(enc: Encoded, pairs: Pairs, rows: np.ndarray, device: str, targets: bool = True) -> dict[str, torch.Tensor]:
    """A padded batch of pair rows on `device`; pointer targets as 0/1 maps."""
    q, p = pairs.question[rows], pairs.passage[rows]
    lq = int(min(MAX_QUESTION, enc.lengths[q].max()))
    lp = int(enc.lengths[p].max())
    q_chars = enc.chars[q, :lq].astype(np.int64)
    q_words = enc.words[q, :lq].astype(np.int64)
    out = {"q_chars": q_chars, "q_words": q_words,
           "p_chars": enc.chars[p, :lp].astype(np.int64), "p_words": enc.words[p, :lp].astype(np.int64)}
    if targets:
        for name, k in (("starts", 0), ("ends", 1)):
            maps = np.zeros((len(rows), lp + 1), np.float32)
            idx = np.where(pairs.spans[rows, :, k] >= 0, np.minimum(pairs.spans[rows, :, k], lp), lp)
            np.put_along_axis(maps, idx, 1.0, axis=1)
            out[name] = maps[:, :lp]
    return {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in out.items()}


def epoch_rows(pairs: Pairs, negatives: int, rng: np.random.Generator) -> np.ndarray:
    """Per question one passage holding the answer (if any) and up to `negatives` answerless ones, redrawn each epoch.

    Balanced pairs keep an epoch affordable while every question and, over epochs, most of its passages are seen.
    """
    groups: dict[int, list[int]] = {}
    qid, answered = pairs.qid.tolist(), pairs.answered.tolist()
    for r in rng.permutation(len(qid)).tolist():
        groups.setdefault(qid[r], []).append(r)
    out: list[int] = []
    for rows in groups.values():
        out += [r for r in rows if answered[r]][:1] + [r for r in rows if not answered[r]][:negatives]
    return np.array(out)


def batches(enc: Encoded, pairs: Pairs, rows: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Length-bucketed batches in random order: little padding, still shuffled."""
    rows = rows[np.argsort(enc.lengths[pairs.passage[rows]] + rng.random(len(rows)) * 8)]
    chunks = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    return [chunks[i] for i in rng.permutation(len(chunks))]


@torch.no_grad()
def predict(model: DGCNNReader, enc: Encoded, texts: list[list[str]], examples: list[dict], device: str,
            batch_size: int = 256) -> list[tuple[str, float]]:
    """Per question (voted answer, best span probability), as the runtime reader decodes them."""
    model.eval()
    pairs = make_pairs(examples)
    found: list[dict[str, list[float]]] = [{} for _ in examples]
    order = np.argsort(enc.lengths[pairs.passage], kind="stable")
    for i in range(0, len(order), batch_size):
        rows = order[i : i + batch_size]
        batch = collate(enc, pairs, rows, device, targets=False)
        with autocast(device):
            start, end = model(batch["q_chars"], batch["q_words"], batch["p_chars"], batch["p_words"])
        valid = (batch["p_chars"] != PAD).cpu().numpy()
        spans = top_spans(start.float().cpu().numpy(), end.float().cpu().numpy(), valid, max_len=MAX_ANSWER)
        for r, row_spans in zip(rows, spans, strict=True):
            if row_spans:
                a, b, score = row_spans[0]
                text = "".join(texts[pairs.passage[r]])[a:b]
                found[pairs.qid[r]].setdefault(text, []).append(score)
    model.train()
    out = []
    for f in found:
        if not f:
            out.append(("", 0.0))
            continue
        totals = vote_totals(f)
        out.append((max(totals, key=totals.__getitem__), max(max(s) for s in f.values())))
    return out


def scores(examples: list[dict], predictions: list[tuple[str, float]], threshold: float) -> dict[str, float]:
    """EM, F1 and (EM+F1)/2 on answerable questions; no-answer accuracy on the others; `null` at the threshold."""
    em = f1 = null_ok = 0.0
    answerable = [(ex, p) for ex, p in zip(examples, predictions, strict=True) if ex["answer"]]
    for ex, (pred, best) in answerable:
        pred = pred if best >= threshold else ""
        em += float(pred == ex["answer"])
        f1 += char_f1(pred, ex["answer"])
    unanswerable = [best for ex, (_, best) in zip(examples, predictions, strict=True) if not ex["answer"]]
    null_ok = sum(best < threshold for best in unanswerable)
    n = max(1, len(answerable))
    return {"em": em / n, "f1": f1 / n, "score": (em + f1) / (2 * n), "no_answer_acc": null_ok / max(1, len(unanswerable)),
            "answerable": len(answerable), "unanswerable": len(unanswerable)}


def calibrate(examples: list[dict], predictions: list[tuple[str, float]]) -> float:
    """The span-probability threshold that maximises dev's summed F1 (answerable) and 1[null] (unanswerable)."""
    best = np.array([b for _, b in predictions])
    gain = np.array([char_f1(p, ex["answer"]) if ex["answer"] else -1.0 for ex, (p, _) in zip(examples, predictions, strict=True)])
    candidates = np.unique(np.r_[np.quantile(best, np.linspace(0, 1, 201)), best.max() + 1e-6])
    # answering keeps an answerable question's F1 and costs an unanswerable one its point
    utility = [gain[(best >= t) & (gain > 0)].sum() + (gain[best < t] < 0).sum() for t in candidates]
    return float(candidates[int(np.argmax(utility))])


def autocast(device: str):
    """bfloat16 autocast on CUDA; nothing on CPU."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/qa"))
    parser.add_argument("--work", type=Path, default=Path("build/dgcnn"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--time-limit", type=float, default=None,
                        help="stop after this many seconds of training if --steps are not done by then")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--negatives", type=int, default=2, help="answerless passages per question per epoch")
    parser.add_argument("--template-share", type=float, default=1.0,
                        help="share of the template questions (idiom, 三国 cloze, fortune) kept for training; "
                             "below 1 a warm start spends its steps on the reading questions")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this DGCNN bundle's weights and vocabularies (the sizes below are then its own)")
    parser.add_argument("--dim", type=int, default=96)
    parser.add_argument("--word-dim", type=int, default=64)
    parser.add_argument("--max-chars", type=int, default=5000)
    parser.add_argument("--max-words", type=int, default=12000)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)

    texts, data = load(args.data)
    data["train"] = reading_share(data["train"], args.template_share, args.seed)
    if args.init:
        from .qa_bundle import reader_from_bundle  # onnx, only for a warm start

        model, vocab = reader_from_bundle(args.init)
        chars, words, config = vocab["chars"], vocab["words"], model.config
        model.train()
    else:
        seen = [texts[i] for i in sorted(train_texts(data["train"]))]
        chars = build_vocab(Counter(c for ws in seen for w in ws for c in w), 2, args.max_chars)
        words = build_vocab(Counter(w for ws in seen for w in ws), 3, args.max_words)
        config = DGCNNConfig(len(chars), len(words), dim=args.dim, word_dim=args.word_dim)
        model = DGCNNReader(config)
    model = model.to(args.device)
    enc = encode_texts(texts, chars, words)
    train = make_pairs(data["train"])

    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    curve: list[dict[str, float]] = []
    running, step, epoch, started = 0.0, 0, 0, time.time()

    def progress() -> float:
        """Share of the budget spent: steps, or seconds when --time-limit binds first (the LR decays either way)."""
        spent = step / args.steps
        return max(spent, (time.time() - started) / args.time_limit) if args.time_limit else spent

    plan: list[np.ndarray] = []
    with tqdm(total=args.steps, desc=f"train ({args.device})", mininterval=10) as bar:
        while progress() < 1:
            if not plan:
                plan, epoch = batches(enc, train, epoch_rows(train, args.negatives, rng), args.batch_size, rng), epoch + 1
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / 200) * max(0.05, 1 - progress())
            batch = collate(enc, train, plan.pop(), args.device)
            with autocast(args.device):
                loss = reader_loss(model, batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            running += loss.item()
            step += 1
            bar.update()
            if step % args.log_every == 0:
                curve.append({"step": step, "epoch": epoch, "loss": running / args.log_every, "seconds": round(time.time() - started, 1)})
                bar.set_postfix(loss=f"{running / args.log_every:.4f}")
                running = 0.0
    train_seconds = time.time() - started

    splits = [s for s in ("dev", "test", "ood") if s in data]
    predictions = {s: predict(model, enc, texts, data[s], args.device) for s in splits}
    threshold = calibrate(data["dev"], predictions["dev"])
    metrics = {s: scores(data[s], predictions[s], threshold) for s in splits}
    metrics["without_threshold"] = {s: scores(data[s], predictions[s], 0.0) for s in splits}
    model = model.float().cpu()
    torch.save({"state_dict": model.state_dict(), "config": config.to_dict()}, args.work / "model.pt")
    (args.work / "vocab.json").write_text(json.dumps({"chars": chars, "words": words}, ensure_ascii=False))
    record = {
        "command": " ".join(["python -m edgeinfer.export.train_dgcnn", *sys.argv[1:]]),
        "device": args.device, "steps": step, "epochs": epoch, "train_seconds": round(train_seconds, 1),
        "train_questions": len(data["train"]), "parameters": sum(p.numel() for p in model.parameters()),
        "threshold": threshold, "metrics": metrics, "curve": curve,
    }
    (args.work / "training.json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k != "curve"}, indent=1))


if __name__ == "__main__":
    main()
