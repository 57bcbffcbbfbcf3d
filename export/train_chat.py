"""Train the DialoGPT-style chat GPT (segment ids per speaker), optionally with TeaForN, and export it.

    python -m edgeinfer.export.chat_data --out data/chat                       # the conversations (once)
    python -m edgeinfer.export.train_chat --data data/chat --out runtime/bundles/chat [--teaforn 2]

TeaForN (Teacher-Forcing with N-grams): after the usual teacher-forced pass, the model's output distribution at
each position is turned into an expected embedding (softmax(logits) @ token embeddings) and fed back, shifted
one position, through the same model to predict the token after next; N passes in all, loss Σ λᵢ·CEᵢ.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .chat_tokenizer import save_tokenizer
from .gpt import GPT, GPTConfig
from .onnx_export import export_gpt_bundle
from .train_gpt import TrainConfig, evaluate, train

PAD, CLS, SEP = 0, 101, 102


def load_split(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    with np.load(path) as data:  # each key access of an .npz re-reads the array: read each once
        ids, segments, offsets = data["input_ids"].astype(np.int64), data["segment_ids"].astype(np.int64), data["offsets"]
    return [(ids[a:b], segments[a:b]) for a, b in itertools.pairwise(offsets)]


def collate(examples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, next-token targets (-100 on padding and on the [CLS] context start), segments."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), PAD, dtype=torch.long)
    segments = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (tokens, segs) in enumerate(examples):
        n = len(tokens)
        ids[row, :n] = torch.from_numpy(tokens)
        segments[row, :n] = torch.from_numpy(segs)
        targets[row, : n - 1] = torch.from_numpy(tokens[1:])
    return ids, targets, segments


def batches(examples, batch_size: int, rng: random.Random):
    while True:
        yield collate(rng.sample(examples, batch_size))


def teaforn_loss(model: GPT, batch, weights: list[float]) -> torch.Tensor:
    """Σ λᵢ·CEᵢ: pass i predicts i tokens ahead from the expected embeddings of pass i-1."""
    ids, targets, segments = batch
    loss, embeds = 0.0, None
    for i, weight in enumerate(weights):
        logits = model.training_logits(ids, segments, embeds)
        shifted = targets[:, i:] if i == 0 else torch.cat([targets[:, i:], targets[:, :i] * 0 - 100], dim=1)
        loss = loss + weight * F.cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                                               ignore_index=-100)
        if i + 1 < len(weights):
            expected = F.softmax(logits, dim=-1) @ model.wte.weight  # (batch, seq, embd)
            first = model.wte(ids[:, :1])
            embeds = torch.cat([first, expected[:, :-1]], dim=1)  # the prediction for t+1 is the input at t+1
    return loss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/chat", type=Path)
    parser.add_argument("--out", default="runtime/bundles/chat", type=Path)
    parser.add_argument("--work", default=None, type=Path, help="checkpoint and log folder (default build/chat-…)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embd", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--teaforn", type=int, default=1, help="N passes (1 = plain teacher forcing)")
    parser.add_argument("--teaforn-decay", type=float, default=0.5, help="λᵢ = decay**i")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = args.work or Path(f"build/chat-teaforn{args.teaforn}")
    splits = {name: load_split(args.data / f"{name}.npz") for name in ("train", "valid", "test")}
    print({name: len(v) for name, v in splits.items()}, flush=True)
    cfg = GPTConfig(vocab_size=21128, n_positions=256, n_embd=args.embd, n_layer=args.layers, n_head=args.heads,
                    n_segments=2, gelu="tanh")
    model = GPT(cfg)
    weights = [args.teaforn_decay**i for i in range(args.teaforn)]

    def eval_batches(name):
        examples = splits[name]
        return lambda: (collate(examples[i : i + 32]) for i in range(0, len(examples), 32))

    log = train(model, batches(splits["train"], args.batch_size, random.Random(args.seed)), eval_batches("valid"),
                TrainConfig(steps=args.steps, lr=2e-3, min_lr=2e-4, seed=args.seed, eval_every=250), work,
                loss_fn=lambda m, b: teaforn_loss(m, b, weights))
    log["valid_perplexity"] = round(math.exp(log["final_valid_loss"]), 2)
    log["test_loss"] = round(evaluate(model, eval_batches("test")), 4)
    (work / "training.json").write_text(json.dumps(log) + "\n")
    torch.save({"config": cfg.to_dict(), "state_dict": model.state_dict()}, work / "model.pt")

    tokenizer = work / "tokenizer.json"
    save_tokenizer(tokenizer)
    manifest = export_gpt_bundle(
        model, args.out, task="chat", tokenizer_file=tokenizer,
        special_tokens={"cls": CLS, "sep": SEP, "pad": PAD, "unk": 100, "eos": SEP},
        generation={"do_sample": True, "top_k": 5, "max_new_tokens": 32, "stop_token_ids": [SEP]},
        extra={"training": {"teaforn": args.teaforn, "teaforn_weights": weights, "steps": args.steps,
                            "batch_size": args.batch_size, "seconds": log["seconds"],
                            "valid_loss": log["final_valid_loss"], "valid_perplexity": log["valid_perplexity"],
                            "test_loss": log["test_loss"]}},
    )
    print(f"wrote {args.out}: valid ppl {log['valid_perplexity']}, parity {manifest['parity']['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
