"""Few-shot text classification on a pretrained masked LM: PET (pattern-exploiting training) and its baselines.

PET reads a text through a pattern with a mask slot ("{text}这是___事。") and lets the MLM choose between label
words (好 -> positive, 坏 -> negative). Fine-tuning keeps that form: the loss is the cross-entropy over the labels
of the label words' log-probabilities at the slot (a word of several tokens: the sum over its masks, the product
of probabilities `edgeinfer.mlm.MaskedLM.cloze` scores), so a fine-tuned model exports as an ordinary masked-LM
bundle and is served by `cloze` unchanged. The rows are built by the runtime's own `edgeinfer.cloze.Template`.

The baselines classify the plain text with a new linear head on the mean of the encoder's last hidden states: on
the same pretrained MLM (`head`), or on a randomly initialised BERT of the same shape (`scratch`).

    python -P -m edgeinfer.export.pet --work build/gpu/mlm --shots 32 --out build/pet/bundle

fine-tunes PET on 32 examples per label of the idiom-sentiment task (`mlm_data.sentiment_task`), reports test
accuracy, and exports the bundle (`-P` keeps the repository's `kernels/` folder from shadowing the `kernels`
package transformers imports). `benchmarks/pet_fewshot.py` compares the methods at 0, 16 and 32 shots.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from edgeinfer.cloze import Template, label_words
from edgeinfer.errors import InputError

from .bert import BertMLM
from .train_mlm import CLS, MASK, PAD, SEP, export_bundle, load, new_model

PATTERN = "{text}这是___事。"
LABELS = {"好": "positive", "坏": "negative"}


@dataclass
class Example:
    text: str
    label: str


def read_task(path: Path) -> dict[str, list[Example]]:
    """The labelled task `mlm_data` wrote: split name -> examples."""
    splits: dict[str, list[Example]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        splits.setdefault(item["split"], []).append(Example(item["text"], item["label"]))
    return splits


def few_shot(pool: list[Example], shots: int, seed: int) -> list[Example]:
    """`shots` examples of each label drawn from `pool` with `seed`."""
    rng = random.Random(seed)
    chosen = []
    for label in sorted({e.label for e in pool}):
        chosen += rng.sample([e for e in pool if e.label == label], shots)
    return chosen


def padded(rows: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), right-padded with [PAD]."""
    ids = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row)
    return ids, (ids != PAD).long()


class PetPattern:
    """A pattern and label words on a tokenizer: the rows PET trains and predicts on, and their label scores."""

    def __init__(self, tokenizer: Tokenizer, pattern: str, labels: dict[str, str], max_length: int) -> None:
        def encode(text: str) -> list[int]:
            return tokenizer.encode(text, add_special_tokens=False).ids

        self.encode, self.max_length = encode, max_length
        self.template = Template(pattern, encode)
        words = label_words(labels, encode, tokenizer.token_to_id("[UNK]"))
        if len({len(ids) for ids in words.values()}) != 1:
            raise InputError("PET training takes label words of one token length")
        self.names = sorted(set(labels.values()))
        self.words = [(ids, self.names.index(labels[w])) for w, ids in words.items()]
        self.length = len(self.words[0][0])

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, attention mask, slot positions (batch, k))."""
        built = [self.template.row(self.encode(t), self.length, MASK, CLS, SEP, self.max_length) for t in texts]
        ids, mask = padded([row for row, _ in built])
        slots = torch.tensor([[slot + i for i in range(self.length)] for _, slot in built])
        return ids, mask, slots

    def label_scores(self, model: BertMLM, texts: Sequence[str]) -> torch.Tensor:
        """(batch, labels) log-scores: each label's words' probabilities (products over their masks) summed."""
        ids, mask, slots = self.batch(texts)
        hidden = model.encode(ids, mask, torch.zeros_like(ids))
        hidden = torch.gather(hidden, 1, slots[..., None].expand(-1, -1, hidden.shape[-1]))
        # BertMLM's prediction head at the slots only: the vocabulary projection of every position is most of the cost
        at_slots = (model.transform_norm(model.transform_act(model.transform(hidden))) @ model.word.weight.t()
                    + model.bias).log_softmax(-1)
        word_scores = torch.stack([at_slots[:, torch.arange(self.length), torch.tensor(ids)].sum(-1)
                                   for ids, _ in self.words], dim=1)
        owner = torch.tensor([label for _, label in self.words])
        return torch.stack([word_scores[:, owner == k].logsumexp(-1) for k in range(len(self.names))], dim=1)


class HeadClassifier(nn.Module):
    """An encoder with a new linear head on the mean of its last hidden states (padding left out)."""

    def __init__(self, encoder: BertMLM, n_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(encoder.cfg.hidden, n_labels)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.encoder.encode(ids, mask, torch.zeros_like(ids))
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(self.dropout(pooled))


class TextRows:
    """Plain [CLS] text [SEP] rows for the head classifiers."""

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[CLS, *self.tokenizer.encode(t, add_special_tokens=False).ids[: self.max_length - 2], SEP] for t in texts]
        return padded(rows)


def fit(model: nn.Module, scores: Callable[[Sequence[str]], torch.Tensor], examples: list[Example],
        names: list[str], steps: int, lr: float, batch_size: int, seed: int) -> None:
    """Cross-entropy of `scores(texts)` (batch, labels) against the labels, AdamW, batches drawn with `seed`."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for _ in tqdm(range(steps), desc="fine-tune", unit="step", mininterval=2.0, leave=False):
        batch = rng.sample(examples, min(batch_size, len(examples)))
        gold = torch.tensor([names.index(e.label) for e in batch])
        loss = nn.functional.cross_entropy(scores([e.text for e in batch]), gold)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()


@torch.no_grad()
def accuracy(scores: Callable[[Sequence[str]], torch.Tensor], examples: list[Example], names: list[str],
             batch_size: int = 64) -> float:
    right = 0
    for i in range(0, len(examples), batch_size):
        part = examples[i : i + batch_size]
        predicted = scores([e.text for e in part]).argmax(-1)
        right += sum(names[int(p)] == e.label for p, e in zip(predicted, part, strict=True))
    return right / len(examples)


@dataclass
class Settings:
    """Fine-tuning hyperparameters, the same for every method and shot count (no dev set: true few-shot)."""

    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-4
    scratch_lr: float = 1e-3


def run_pet(work: Path, tokenizer: Tokenizer, train: list[Example], test: list[Example], seed: int,
            settings: Settings, pattern: str = PATTERN, labels: dict[str, str] = LABELS) -> tuple[float, BertMLM]:
    """Test accuracy of PET fine-tuned on `train` (none: zero-shot), and the model."""
    model = load(work)
    cloze = PetPattern(tokenizer, pattern, labels, model.cfg.max_positions)
    scores = lambda texts: cloze.label_scores(model, texts)
    if train:
        fit(model, scores, train, cloze.names, settings.steps, settings.lr, settings.batch_size, seed)
    return accuracy(scores, test, cloze.names), model


def run_head(work: Path, tokenizer: Tokenizer, train: list[Example], test: list[Example], seed: int,
             settings: Settings, pretrained: bool) -> float:
    """Test accuracy of a linear head fine-tuned on `train` with the MLM at `work` (pretrained), or with a randomly
    initialised BERT of its shape (not pretrained, `settings.scratch_lr`)."""
    encoder = load(work)
    torch.manual_seed(seed)
    if not pretrained:
        cfg = encoder.cfg
        encoder = new_model(cfg.vocab_size, cfg.max_positions, cfg.hidden, cfg.n_layer, cfg.n_head, cfg.intermediate)
    names = sorted({e.label for e in train})
    model = HeadClassifier(encoder, len(names))
    rows = TextRows(tokenizer, encoder.cfg.max_positions)
    scores = lambda texts: model(*rows.batch(texts))
    fit(model, scores, train, names, settings.steps, settings.lr if pretrained else settings.scratch_lr,
        settings.batch_size, seed)
    return accuracy(scores, test, names)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/mlm"), help="mlm_data's folder")
    parser.add_argument("--work", type=Path, default=Path("build/mlm"), help="train_mlm's folder (model.pt)")
    parser.add_argument("--shots", type=int, default=32, help="examples per label")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="the fine-tuned masked-LM bundle")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tokenizer = Tokenizer.from_file(str(args.data / "tokenizer.json"))
    task = read_task(args.data / "sentiment.jsonl")
    train = few_shot(task["train"], args.shots, args.seed)
    torch_accuracy, model = run_pet(args.work, tokenizer, train, task["test"], args.seed, Settings())
    export_bundle(model, args.data / "tokenizer.json", args.out.parent / f"{args.out.name}-checkpoint", args.out)
    import edgeinfer

    served = edgeinfer.load(args.out, device="cpu", threads=args.threads)
    found = served.cloze([e.text for e in task["test"]], pattern=PATTERN, labels=LABELS)
    bundle_accuracy = sum(c.label == e.label for c, e in zip(found, task["test"], strict=True)) / len(found)
    print(json.dumps({"shots": args.shots, "seed": args.seed, "pattern": PATTERN, "labels": LABELS,
                      "test_items": len(task["test"]), "accuracy_torch": round(torch_accuracy, 4),
                      "accuracy_bundle": round(bundle_accuracy, 4), "bundle": str(args.out)}, ensure_ascii=False))


if __name__ == "__main__":
    main()
