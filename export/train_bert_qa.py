"""Fine-tune the pretrained Chinese BERT (`train_mlm`'s model.pt) as an extractive-QA reader on data/qa, and export it.

    python -m edgeinfer.export.train_bert_qa --mlm build/mlm --data data/qa --work build/bert-qa --max-minutes 30 \
        --out runtime/bundles/qa

Training windows are the ones the runtime's BERT reader reads ([CLS] question [SEP] passage window [SEP], laid out
by `bert.reader_layout` and cut by the runtime's `windows`). A window that does not hold a whole answer points start
and end at [CLS], as SQuAD 2.0 readers do, and the bundle says so (`qa.null_token`), so the runtime normalises span
probabilities against it. Each epoch takes every window holding an answer and `--negatives` times as many without one.

After training, the weights go out through transformers' `BertForQuestionAnswering` (the path an imported checkpoint
takes: fused graph, parity against transformers) to `--work`/checkpoint; the runtime `Reader` reads dev through an
fp32 bundle of it to calibrate the no-answer threshold (as `train_dgcnn` does). ``training.json`` keeps the command,
the loss curve and the threshold. With ``--out`` (after training, or alone with ``--export-only``) the checkpoint is
exported there with ``--quantize`` weights and the threshold, and its dev, test and ood scores, read through the
runtime, go into the manifest; `benchmarks/qa_quality.py --bundle OUT --splits test ood outside` scores it again.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

from edgeinfer.bundle import Manifest
from edgeinfer.qa.windows import windows

from .bert import BertQA, export_bert_qa_bundle, reader_layout
from .qa_data import read_split, reading_share
from .quantize import QUANTIZATIONS
from .train_dgcnn import calibrate, scores
from .train_mlm import CLS, PAD, SEP, learning_rate, to_transformers
from .train_mlm import load as load_mlm

SENTENCE_END = re.compile(r"[。！？；!?;]")
# opset-23 Attention rather than MultiHeadAttention: a batch of 8 windows of 128 tokens runs 13% faster with it here
# (11.3 against 12.9 ms, 5x128 reader, int8, one thread); at 384 tokens of BERT-base they measured the same
READER_ATTENTION = "standard"


@dataclass
class Windows:
    """Training windows: token ids (n, window), the question's length (segment 0 is [CLS] question [SEP]) and the
    start/end targets as sequence positions (0: [CLS], no answer in this window)."""

    ids: np.ndarray
    question_len: np.ndarray
    start: np.ndarray
    end: np.ndarray
    kind: np.ndarray  # the question's kind (qa_questions' types, or a template source)

    @property
    def answered(self) -> np.ndarray:
        return self.start > 0


def token_span(offsets: list[tuple[int, int]], char_start: int, char_end: int) -> tuple[int, int] | None:
    """The first and last token overlapping the characters [char_start, char_end), or None."""
    inside = [t for t, (a, b) in enumerate(offsets) if a < char_end and b > char_start]
    return (inside[0], inside[-1]) if inside else None


def answer_sentence(passage: dict) -> dict | None:
    """The passage cut to the sentence holding its first answer (offsets moved with it), or None: a short context,
    as users give one, beside the long windows of running text the generated passages are."""
    if not passage["answers"]:
        return None
    a, b = passage["answers"][0]
    text = passage["text"]
    start = max((m.end() for m in SENTENCE_END.finditer(text, 0, a)), default=0)
    end = next((m.end() for m in SENTENCE_END.finditer(text, b)), len(text))
    if (start, end) == (0, len(text)):
        return None
    spans = [[s - start, e - start] for s, e in passage["answers"] if start <= s and e <= end]
    return {"text": text[start:end], "answers": spans}


def build_windows(examples: list[dict], tokenizer: Tokenizer, layout: dict[str, int], short: bool = False) -> Windows:
    """Every window of every (question, passage) pair, with its target; `short` adds, per passage holding the
    answer, that passage cut to the answer's sentence."""
    window, separators = layout["window"], layout["separators"]
    pairs = [(ex, p) for ex in examples for p in ex["passages"]]
    if short:
        pairs += [(ex, cut) for ex, p in pairs if (cut := answer_sentence(p)) is not None]
    questions = tokenizer.encode_batch([ex["question"] for ex, _ in pairs], add_special_tokens=False)
    passages = tokenizer.encode_batch([p["text"] for _, p in pairs], add_special_tokens=False)
    rows, lengths, starts, ends, kinds = [], [], [], [], []
    for (ex, passage), question, encoded in tqdm(list(zip(pairs, questions, passages, strict=True)), desc="windows",
                                                 mininterval=5):
        q = question.ids[: layout["max_question_len"]]
        size = window - len(q) - 2 - separators
        first = len(q) + 1 + separators  # sequence position of a window's first passage token
        spans = [token_span(encoded.offsets, a, b) for a, b in passage["answers"]]
        for a, b in windows(len(encoded.ids), size, min(layout["stride"], size // 2)):
            target = next(((s - a + first, e - a + first) for s, e in filter(None, spans) if a <= s and e < b), (0, 0))
            rows.append([CLS, *q, *[SEP] * separators, *encoded.ids[a:b], SEP])
            lengths.append(len(q))
            starts.append(target[0])
            ends.append(target[1])
            kinds.append(ex.get("kind", ""))
    ids = np.full((len(rows), window), PAD, np.int16)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
    return Windows(ids, np.array(lengths), np.array(starts), np.array(ends), np.array(kinds))


def epoch_rows(data: Windows, negatives: float, rng: np.random.Generator, balance: float = 0.0) -> np.ndarray:
    """The answered windows and `negatives` times as many answerless ones (redrawn each epoch), shuffled.

    balance > 0 redraws the answered windows (as many as there are) with each kind weighted by its count to the
    power -balance: 0.5 halves the gap between a common kind (a noun) and a rare one (a number, a reason).
    """
    answered, empty = np.flatnonzero(data.answered), np.flatnonzero(~data.answered)
    if balance > 0:
        _, index, counts = np.unique(data.kind[answered], return_inverse=True, return_counts=True)
        weight = counts[index].astype(np.float64) ** -balance
        answered = rng.choice(answered, size=len(answered), p=weight / weight.sum())
    drawn = rng.choice(empty, size=min(len(empty), int(negatives * len(answered))), replace=False)
    return rng.permutation(np.concatenate([answered, drawn]))


def batch_tensors(data: Windows, rows: np.ndarray, separators: int) -> dict[str, torch.Tensor]:
    """The padded batch cut to its longest row, with token types and the positions a pointer may take."""
    ids = torch.from_numpy(data.ids[rows].astype(np.int64))
    width = int((ids != PAD).sum(dim=1).max())
    ids = ids[:, :width]
    mask = (ids != PAD).long()
    positions = torch.arange(width)[None]
    question_end = torch.from_numpy(data.question_len[rows])[:, None] + separators  # last position of segment 0
    types = (positions > question_end).long() * mask
    # pointers may land on [CLS] (no answer) or a passage token, never on the question, a separator or padding
    allowed = (positions == 0) | ((types == 1) & (ids != SEP))
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "allowed": allowed,
            "start": torch.from_numpy(data.start[rows]), "end": torch.from_numpy(data.end[rows])}


def qa_loss(model: BertQA, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    start, end = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    blocked = ~batch["allowed"]
    start, end = start.masked_fill(blocked, -1e4), end.masked_fill(blocked, -1e4)
    return (F.cross_entropy(start, batch["start"]) + F.cross_entropy(end, batch["end"])) / 2


def reader_from_mlm(mlm_work: Path) -> BertQA:
    """A BertQA whose encoder is the pretrained masked LM's; the span head starts at BERT's initialisation."""
    mlm = load_mlm(mlm_work)
    model = BertQA(mlm.cfg)
    missing, unexpected = model.load_state_dict(mlm.state_dict(), strict=False)
    head_only = set(missing) == {"qa.weight", "qa.bias"} and all(k.startswith(("transform", "bias")) for k in unexpected)
    if not head_only:
        raise RuntimeError(f"the masked LM's encoder does not fit BertQA: missing {missing}, unexpected {unexpected}")
    torch.nn.init.normal_(model.qa.weight, std=0.02)
    torch.nn.init.zeros_(model.qa.bias)
    return model


def reader_from_checkpoint(checkpoint: Path) -> BertQA:
    """A BertQA with the weights of a saved BertForQuestionAnswering folder (a warm start)."""
    from .hf_import import import_checkpoint

    model, _ = import_checkpoint(checkpoint, "qa")
    return model


def load_reader(bundle: Path, threads: int):
    """The bundle opened by the runtime on the CPU, as users read with it."""
    import edgeinfer

    return edgeinfer.load(bundle, device="cpu", threads=threads)


def predictions(reader, examples: list[dict]) -> list[tuple[str, float]]:
    """(best answer, its best window-span probability) per question, read by the runtime with no threshold."""
    found = reader.answer([ex["question"] for ex in examples], [[p["text"] for p in ex["passages"]] for ex in examples],
                          threshold=0.0)
    return [(answers[0].text, max(a.span_score for a in answers)) if answers else ("", 0.0) for answers in found]


def train(args: argparse.Namespace) -> dict:
    """Fine-tune, write the transformers checkpoint to --work/checkpoint, calibrate the threshold on dev through an
    fp32 bundle; returns the training record (also written to --work/training.json)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_file(str(args.tokenizer))
    model = (reader_from_checkpoint(args.init) if args.init else reader_from_mlm(args.mlm)).train()
    layout = reader_layout(model.cfg)
    train_set = build_windows(reading_share(read_split(args.data, "train"), args.template_share, args.seed), tokenizer,
                              layout, short=args.short_contexts)
    print(f"{len(train_set.ids)} training windows, {int(train_set.answered.sum())} with an answer", file=sys.stderr)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    curve, running, step, started = [], 0.0, 0, time.time()
    plan: list[np.ndarray] = []
    budget = args.max_minutes * 60

    def progress() -> float:
        return max(step / args.steps, (time.time() - started) / budget)

    with tqdm(total=args.steps, desc="fine-tune", mininterval=10) as bar:
        while progress() < 1:
            if not plan:
                rows = epoch_rows(train_set, args.negatives, rng, args.balance_kinds)
                plan = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)][::-1]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(progress(), args.lr)
            loss = qa_loss(model, batch_tensors(train_set, plan.pop(), layout["separators"]))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            running += loss.item()
            step += 1
            bar.update()
            if step % args.log_every == 0:
                curve.append({"step": step, "loss": running / args.log_every, "seconds": round(time.time() - started, 1)})
                bar.set_postfix(loss=f"{running / args.log_every:.4f}")
                running = 0.0
    train_seconds = time.time() - started

    checkpoint, calibration = args.work / "checkpoint", args.work / "bundle-fp32"
    to_transformers(model.eval()).save_pretrained(checkpoint)
    shutil.copyfile(args.tokenizer, checkpoint / "tokenizer.json")
    export_bert_qa_bundle(checkpoint, calibration, null_token=True, attention=READER_ATTENTION)  # windows: `layout`'s
    dev = read_split(args.data, "dev")
    record = {
        "command": " ".join(["python -m edgeinfer.export.train_bert_qa", *sys.argv[1:]]),
        "steps": step, "train_seconds": round(train_seconds, 1), "train_windows": len(train_set.ids),
        "parameters": sum(p.numel() for p in model.parameters()),
        "threshold": calibrate(dev, predictions(load_reader(calibration, args.threads), dev)), "curve": curve,
    }
    (args.work / "training.json").write_text(json.dumps(record, indent=1))
    return record


def export(args: argparse.Namespace) -> dict:
    """--work's checkpoint as a bundle at --out (--quantize weights, the calibrated threshold), with its dev, test and
    ood scores measured through the runtime; returns the manifest."""
    record = json.loads((args.work / "training.json").read_text())
    export_bert_qa_bundle(args.work / "checkpoint", args.out, null_token=True, threshold=record["threshold"],
                          quantize=args.quantize, attention=READER_ATTENTION)
    reader = load_reader(args.out, args.threads)
    metrics = {}
    for split in ("dev", "test", "ood"):
        examples = read_split(args.data, split)
        metrics[split] = scores(examples, predictions(reader, examples), record["threshold"])
    _, manifest = Manifest.read(args.out)
    manifest["qa"]["calibration"] = ("threshold on the best span probability maximising dev's F1 (answerable) + "
                                     "no-answer accuracy (unanswerable); below it no answer is returned")
    manifest["metrics"] = metrics
    manifest["training"] = {k: record[k] for k in ("command", "steps", "train_seconds", "train_windows")}
    manifest.write(args.out)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlm", type=Path, default=Path("build/mlm"), help="train_mlm's folder (model.pt)")
    parser.add_argument("--tokenizer", type=Path, default=Path("data/mlm/tokenizer.json"))
    parser.add_argument("--data", type=Path, default=Path("data/qa"))
    parser.add_argument("--work", type=Path, default=Path("build/bert-qa"))
    parser.add_argument("--out", type=Path, help="export the bundle here after training (or with --export-only)")
    parser.add_argument("--export-only", action="store_true", help="export --work's checkpoint to --out; no training")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="int8",
                        help="weights of the exported bundle (int8: same answers here, 1.5x the passages/s of fp32)")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--max-minutes", type=float, default=math.inf, help="stop training after this long")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--negatives", type=float, default=1.0, help="answerless windows per answered one, per epoch")
    parser.add_argument("--init", type=Path, help="start from this BertForQuestionAnswering folder instead of --mlm")
    parser.add_argument("--balance-kinds", type=float, default=0.0,
                        help="draw answered windows with each question kind weighted by count**-B (0: as generated)")
    parser.add_argument("--short-contexts", action="store_true",
                        help="also train on each answer's passage cut to the answer's sentence")
    parser.add_argument("--template-share", type=float, default=0.2,
                        help="share of the template questions (idiom, 三国 cloze, fortune) kept for training")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.export_only and args.out is None:
        parser.error("--export-only needs --out")
    if not args.export_only:
        record = train(args)
        print(json.dumps({k: v for k, v in record.items() if k != "curve"}, indent=1))
    if args.out is not None:
        manifest = export(args)
        print(json.dumps({"bundle": str(args.out), "metrics": manifest["metrics"]}, indent=1))


if __name__ == "__main__":
    main()
