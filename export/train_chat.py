"""Train the DialoGPT-style chat GPT (segment ids per speaker), optionally with TeaForN, and export it.

    python -m edgeinfer.export.chat_data --out data/chat                                      # data (once, CPU)
    python -m edgeinfer.export.train_chat --data data/chat --work build/chat --device cuda   # train: model.pt
    python -m edgeinfer.export.train_chat --data data/chat --work build/chat --export-only --out runtime/bundles/chat

Without `--export-only` the script trains and then exports; training reads only the files `chat_data` wrote
(pre-tokenized .npz splits and tokenizer.json) and imports only torch, numpy, tqdm and tokenizers, so it runs on a
machine without the data sources. Rows of a batch are drawn per source: `--zh-share` of them from the Chinese
conversations, which hold under 1% of the tokens and would otherwise barely be seen.

TeaForN (Teacher-Forcing with N-grams): after the usual teacher-forced pass, the model's output distribution at
each position is turned into an expected embedding (softmax(logits) @ token embeddings) and fed back, shifted
one position, through the same model to predict the token after next; N passes in all, loss Σ λᵢ·CEᵢ. A step
costs about N plain steps, so `--teaforn 2 --steps S/2` is the same compute as `--steps S`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .chat_tokenizer import load_tokenizer, special_token_ids
from .gpt import GPT, GPTConfig
from .train_gpt import TrainConfig, evaluate, train

MAX_POSITIONS = 256
# Decoding defaults written into the bundle's generation block, chosen with benchmarks/chat_quality.py's goals:
# nucleus sampling at a low temperature (replies end at [SEP] instead of rambling to the limit) and a mild
# repetition penalty against loops (a strong one also pushes down [SEP] and punctuation, which every turn holds).
GENERATION = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 48}

Example = tuple[np.ndarray, np.ndarray]


def load_split(path: Path) -> tuple[list[Example], np.ndarray, list[str]]:
    """Examples (ids, segments), each one's source index, and the source names."""
    with np.load(path) as data:  # each key access of an .npz re-reads the array: read each once
        ids, segments, offsets = data["input_ids"].astype(np.int64), data["segment_ids"].astype(np.int64), data["offsets"]
        source, names = data["source"].astype(np.int64), [str(s) for s in data["sources"]]
    return [(ids[a:b], segments[a:b]) for a, b in itertools.pairwise(offsets)], source, names


def collate(examples: list[Example], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, next-token targets (-100 on padding and after the last token), segments."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    segments = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (tokens, segs) in enumerate(examples):
        n = len(tokens)
        ids[row, :n] = torch.from_numpy(tokens)
        segments[row, :n] = torch.from_numpy(segs)
        targets[row, : n - 1] = torch.from_numpy(tokens[1:])
    return ids, targets, segments


def batches(examples: list[Example], source: np.ndarray, batch_size: int, zh_share: float, zh_source: int,
            pad: int, rng: random.Random):
    """Endless random batches; each row comes from the Chinese pool with probability `zh_share`."""
    pools = [[e for e, s in zip(examples, source) if s != zh_source], [e for e, s in zip(examples, source) if s == zh_source]]
    while True:
        yield collate([rng.choice(pools[rng.random() < zh_share and bool(pools[1])]) for _ in range(batch_size)], pad)


def teaforn_loss(model: GPT, batch, weights: list[float]) -> torch.Tensor:
    """Σ λᵢ·CEᵢ: pass i predicts i tokens ahead from the expected embeddings of pass i-1."""
    ids, targets, segments = batch
    loss, embeds = 0.0, None
    for i, weight in enumerate(weights):
        logits = model.training_logits(ids, segments, embeds)
        shifted = targets[:, i:] if i == 0 else torch.cat([targets[:, i:], targets[:, :i] * 0 - 100], dim=1)
        loss = loss + weight * F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                                               ignore_index=-100)
        if i + 1 < len(weights):
            expected = F.softmax(logits.float(), dim=-1).to(model.wte.weight.dtype) @ model.wte.weight
            first = model.wte(ids[:, :1])
            embeds = torch.cat([first, expected[:, :-1].to(first.dtype)], dim=1)  # prediction for t+1 is input at t+1
    return loss


def eval_batches(examples: list[Example], pad: int, size: int = 32):
    return lambda: (collate(examples[i : i + size], pad) for i in range(0, len(examples), size))


def train_model(args: argparse.Namespace, work: Path) -> None:
    """Train on `args.device` and write model.pt and training.json into `work`."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tokenizer = load_tokenizer(args.data / "tokenizer.json")
    pad = special_token_ids(tokenizer)["pad"]
    (train_examples, train_source, names), valid = load_split(args.data / "train.npz"), load_split(args.data / "valid.npz")
    print(f"train {len(train_examples)} examples, valid {len(valid[0])}, sources {names}", flush=True)
    cfg = GPTConfig(vocab_size=tokenizer.get_vocab_size(), n_positions=MAX_POSITIONS, n_embd=args.embd,
                    n_layer=args.layers, n_head=args.heads, n_segments=2, gelu="tanh", dropout=args.dropout)
    model = GPT(cfg)
    weights = [args.teaforn_decay**i for i in range(args.teaforn)]
    rows = batches(train_examples, train_source, args.batch_size, args.zh_share, names.index("chatterbot_zh"), pad,
                   random.Random(args.seed))
    log = train(model, rows, eval_batches(valid[0], pad),
                TrainConfig(steps=args.steps, lr=args.lr, min_lr=args.lr / 10, seed=args.seed,
                            eval_every=args.eval_every, device=args.device,
                            max_seconds=args.max_minutes * 60 if args.max_minutes else None),
                work, loss_fn=lambda m, b: teaforn_loss(m, b, weights))
    log.update(command=" ".join(["python -m edgeinfer.export.train_chat", *sys.argv[1:]]),
               teaforn=args.teaforn, teaforn_weights=weights, steps=log["steps_run"], batch_size=args.batch_size,
               zh_share=args.zh_share, n_parameters=sum(p.numel() for p in model.parameters()))
    (work / "training.json").write_text(json.dumps(log) + "\n")
    torch.save({"config": cfg.to_dict(), "state_dict": model.state_dict()}, work / "model.pt")


def export_model(args: argparse.Namespace, work: Path) -> dict:
    """Turn `work`'s model.pt into the bundle at `args.out`.

    The validation loss is the one training measured last; the Chinese conversations' own perplexity, a few
    hundred tokens that the overall figure hides, is measured here.
    """
    from .onnx_export import export_gpt_bundle  # onnx is needed by the export step only

    torch.set_num_threads(args.threads)
    checkpoint = torch.load(work / "model.pt", map_location="cpu")
    model = GPT(GPTConfig(**{**checkpoint["config"], "dropout": 0.0}))
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    log = json.loads((work / "training.json").read_text())
    tokenizer = load_tokenizer(args.data / "tokenizer.json")
    special = special_token_ids(tokenizer)
    examples, source, names = load_split(args.data / "valid.npz")
    zh = names.index("chatterbot_zh")
    zh_loss = evaluate(model, eval_batches([e for e, s in zip(examples, source) if s == zh], special["pad"]))
    figures = {"teaforn": log["teaforn"], "teaforn_weights": log["teaforn_weights"], "steps": log["steps"],
               "batch_size": log["batch_size"], "zh_share": log["zh_share"], "device": log["config"]["device"],
               "seconds": log["seconds"], "valid_loss": log["final_valid_loss"],
               "valid_perplexity": round(math.exp(log["final_valid_loss"]), 2),
               "valid_perplexity_zh": round(math.exp(zh_loss), 2)}
    manifest = export_gpt_bundle(
        model, args.out, task="chat", tokenizer_file=args.data / "tokenizer.json", special_tokens=special,
        generation={**GENERATION, "stop_token_ids": [special["sep"]]}, extra={"training": figures},
    )
    print(f"wrote {args.out}: valid ppl {figures['valid_perplexity']} (Chinese {figures['valid_perplexity_zh']}), "
          f"parity {manifest['parity']['max_abs_diff']:.2e}", flush=True)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/chat", type=Path)
    parser.add_argument("--out", default="runtime/bundles/chat", type=Path)
    parser.add_argument("--work", default=None, type=Path, help="model.pt and training.json (default build/chat-…)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bfloat16 autocast); export is always on the CPU")
    parser.add_argument("--export-only", action="store_true", help="export --work's model.pt without training")
    parser.add_argument("--no-export", action="store_true", help="train only (a machine without onnx)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="time budget: the schedule decays over it and training stops there if steps remain")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--embd", type=int, default=192)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--zh-share", type=float, default=0.2, help="share of batch rows from Chinese conversations")
    parser.add_argument("--teaforn", type=int, default=1, help="N passes (1 = plain teacher forcing)")
    parser.add_argument("--teaforn-decay", type=float, default=0.5, help="λᵢ = decay**i")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    work = args.work or Path(f"build/chat-teaforn{args.teaforn}")
    if not args.export_only:
        train_model(args, work)
    if not args.no_export:
        export_model(args, work)


if __name__ == "__main__":
    main()
