"""Pretrain a small Chinese BERT (`bert.BertMLM`) with whole-word masking, and export it as a masked-LM bundle.

Training reads only what `mlm_data` wrote (``train.npz``, ``valid.npz``, ``tokenizer.json``) and imports only torch,
numpy, tqdm and tokenizers, so it runs on a GPU machine with none of the data tools (``--device cuda``: bfloat16
autocast, the data held on the GPU). Whole-word masking happens at each step from the stored jieba word starts:
each word is picked with probability ``--mask-prob`` and all its tokens are masked together (80% [MASK], 10% a
random token, 10% kept), as the Chinese BERTs do. ``--work`` receives ``model.pt`` (config and weights) and
``training.json`` (loss curve, held-out masked-token loss and accuracy, the command; ``benchmarks/training_curves.py``
plots it).

Export (``--export-only``, or after training when ``--out`` is given) writes the weights as a transformers
`BertForMaskedLM` checkpoint and exports that with `bert.export_bert_mlm_bundle`, the path an imported checkpoint
takes: fused GELU and attention, parity against transformers.

    python -m edgeinfer.export.train_mlm --data data/mlm --work build/mlm --device cuda --steps 8000 --batch-size 256
    python -m edgeinfer.export.train_mlm --work build/mlm --export-only --out build/mlm/bundle
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from .bert import BertConfig, BertMLM, BertQA
from .mlm_data import SPECIAL_TOKENS, load_rows
from .train_gpt import autocast

PAD, UNK, CLS, SEP, MASK = range(len(SPECIAL_TOKENS))
IGNORE = -100


def new_model(vocab_size: int, seq: int, hidden: int, layers: int, heads: int, intermediate: int) -> BertMLM:
    """A BERT of the given shape with BERT's initialisation (normal 0.02, zero biases, unit norms)."""
    cfg = BertConfig(vocab_size=vocab_size, hidden=hidden, n_layer=layers, n_head=heads, intermediate=intermediate,
                     max_positions=seq)
    model = BertMLM(cfg)
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.zeros_(module.bias)
    return model


def learning_rate(progress: float, peak: float, warmup: float = 0.05) -> float:
    """Linear warmup over the first `warmup` of training, then cosine decay to a tenth of `peak`; `progress` in
    [0, 1] is the share of the steps or of the time budget spent, whichever is larger."""
    if progress < warmup:
        return peak * max(progress, 1e-3) / warmup
    return peak / 10 + 0.45 * peak * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))


def mask_whole_words(ids: torch.Tensor, word_start: torch.Tensor, prob: float, vocab_size: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked inputs, targets with IGNORE where nothing is predicted): each word (a word-start token and the tokens
    up to the next start) is picked with probability `prob`; a picked word's tokens become [MASK] (80%), a random
    token (10%) or stay (10%), decided per word. [CLS], [SEP] and padding are never picked."""
    device = ids.device
    word = torch.cumsum(word_start.long(), dim=1)  # word number of each token, 1-based within its row
    draws = torch.rand((*ids.shape, 2), generator=generator, device=device)
    per_word = torch.gather(draws, 1, (word - 1).clamp(max=ids.shape[1] - 1)[..., None].expand(-1, -1, 2))
    real = (ids > MASK) | (ids == UNK)
    picked = (per_word[..., 0] < prob) & real
    targets = torch.where(picked, ids, torch.full_like(ids, IGNORE))
    choice = per_word[..., 1]
    random_ids = torch.randint(MASK + 1, vocab_size, ids.shape, generator=generator, device=device)
    inputs = torch.where(picked & (choice < 0.8), torch.full_like(ids, MASK), ids)
    inputs = torch.where(picked & (choice >= 0.8) & (choice < 0.9), random_ids, inputs)
    return inputs, targets


def mlm_loss(model: BertMLM, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over the predicted positions, how many of them the argmax gets right)."""
    logits = model(inputs, (inputs != PAD).long(), torch.zeros_like(inputs))
    chosen = targets != IGNORE
    logits, gold = logits[chosen].float(), targets[chosen]
    return torch.nn.functional.cross_entropy(logits, gold), (logits.argmax(-1) == gold).sum()


@torch.no_grad()
def evaluate(model: BertMLM, ids: torch.Tensor, starts: torch.Tensor, prob: float, batch: int) -> dict[str, float]:
    """Held-out masked-token loss and accuracy under one fixed whole-word masking (seed 1234)."""
    model.eval()
    generator = torch.Generator(ids.device).manual_seed(1234)
    total, correct, count = 0.0, 0, 0
    for i in range(0, len(ids), batch):
        inputs, targets = mask_whole_words(ids[i : i + batch], starts[i : i + batch], prob, model.cfg.vocab_size,
                                           generator)
        with autocast(ids.device):
            loss, right = mlm_loss(model, inputs, targets)
        n = int((targets != IGNORE).sum())
        total, correct, count = total + float(loss) * n, correct + int(right), count + n
    model.train()
    return {"loss": round(total / count, 4), "accuracy": round(correct / count, 4), "tokens": count}


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    train_ids, train_starts = (torch.from_numpy(a).to(device) for a in load_rows(args.data / "train.npz"))
    valid_ids, valid_starts = (torch.from_numpy(a).to(device) for a in load_rows(args.data / "valid.npz"))
    from tokenizers import Tokenizer

    vocab_size = Tokenizer.from_file(str(args.data / "tokenizer.json")).get_vocab_size()
    model = new_model(vocab_size, train_ids.shape[1], args.hidden, args.layers, args.heads, args.intermediate).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98), fused=device.type == "cuda")
    generator = torch.Generator(device).manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    log = {"command": shlex.join(["python", "-m", "edgeinfer.export.train_mlm", *sys.argv[1:]]),
           "model": asdict(model.cfg), "n_parameters": sum(p.numel() for p in model.parameters()),
           "train_rows": len(train_ids), "train": [], "valid": [], "valid_accuracy": []}
    started = time.perf_counter()
    progress = tqdm(range(args.steps), desc="pretrain", unit="step", mininterval=2.0)
    smoothed = None
    for step in progress:
        spent = max(step / args.steps, (time.perf_counter() - started) / (args.max_minutes * 60))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(spent, args.lr)
        rows = torch.randint(0, len(train_ids), (args.batch_size,), generator=generator, device=device)
        inputs, targets = mask_whole_words(train_ids[rows], train_starts[rows], args.mask_prob, vocab_size, generator)
        with autocast(device):
            loss, _ = mlm_loss(model, inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        last = step + 1 == args.steps or spent >= 1
        if step % 25 == 0 or last:
            value = loss.item()
            smoothed = value if smoothed is None else 0.8 * smoothed + 0.2 * value
            log["train"].append([step, round(value, 4)])
            progress.set_postfix(loss=f"{smoothed:.3f}")
        if (step + 1) % args.eval_every == 0 or last:
            valid = evaluate(model, valid_ids, valid_starts, args.mask_prob, args.batch_size)
            log["valid"].append([step + 1, valid["loss"]])
            log["valid_accuracy"].append([step + 1, valid["accuracy"]])
            progress.write(f"step {step + 1}: train {smoothed:.4f} valid loss {valid['loss']:.4f} "
                           f"masked-token accuracy {valid['accuracy']:.4f}")
            log |= {"steps_done": step + 1, "seconds": round(time.perf_counter() - started, 1), "final_valid": valid}
            save(model, log, args.work)
        if last:
            break
    return log


def save(model: BertMLM, log: dict, work: Path) -> None:
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    torch.save({"config": asdict(model.cfg), "state": state}, work / "model.pt")
    (work / "training.json").write_text(json.dumps(log) + "\n")


def load(work: Path) -> BertMLM:
    """The model `train` saved under `work`, on the CPU, in eval mode."""
    checkpoint = torch.load(work / "model.pt", map_location="cpu", weights_only=True)
    model = BertMLM(BertConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["state"])
    return model.eval()


def to_transformers(model: BertMLM | BertQA):
    """The same weights as a transformers `BertForMaskedLM` or `BertForQuestionAnswering` (the inverse of
    `hf_import.import_bert_mlm` and `import_bert_qa`)."""
    import transformers

    from .hf_import import BERT_LAYER, _encoder_modules

    cfg = model.cfg
    config = transformers.BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
        intermediate_size=cfg.intermediate, max_position_embeddings=cfg.max_positions,
        type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps, hidden_act="gelu", pad_token_id=PAD,
        tie_word_embeddings=True)
    modules = _encoder_modules(model, "bert", "encoder.layer", BERT_LAYER)
    if isinstance(model, BertQA):
        hf, tied = transformers.BertForQuestionAnswering(config), set()
        modules |= {"qa": ("qa_outputs",)}
    else:
        hf, tied = transformers.BertForMaskedLM(config), {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
        modules |= {"transform": ("cls.predictions.transform.dense",),
                    "transform_norm": ("cls.predictions.transform.LayerNorm",), "": ("cls.predictions",)}
    state = {}
    for name, tensor in model.state_dict().items():
        module, _, part = name.rpartition(".")
        state[f"{modules[module][0]}.{part}"] = tensor
    missing, unexpected = hf.load_state_dict(state, strict=False)
    left = set(missing) - tied
    if left or unexpected:
        raise RuntimeError(f"weights do not map onto {type(hf).__name__}: missing {sorted(left)}, unexpected {unexpected}")
    if tied:
        hf.tie_weights()
    return hf.eval()


def export_bundle(model: BertMLM, tokenizer: Path, checkpoint_dir: Path, out: Path) -> dict:
    """Write `model` as a transformers checkpoint (with `tokenizer`) in `checkpoint_dir`, then export that folder to a
    masked-LM bundle at `out` exactly as `edgeinfer export --from-hf DIR --task masked-lm` does. Returns the manifest."""
    from .bert import export_bert_mlm_bundle

    to_transformers(model).save_pretrained(checkpoint_dir)
    shutil.copyfile(tokenizer, checkpoint_dir / "tokenizer.json")
    return export_bert_mlm_bundle(checkpoint_dir, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/mlm"))
    parser.add_argument("--work", type=Path, default=Path("build/mlm"))
    parser.add_argument("--out", type=Path, help="export a bundle here after training (or with --export-only)")
    parser.add_argument("--export-only", action="store_true", help="export --work's model.pt to --out; no training")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--mask-prob", type=float, default=0.15)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=384)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--max-minutes", type=float, default=math.inf,
                        help="time budget: the learning rate decays over it and training stops (and saves) at its end")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.export_only:
        log = train(args)
        print(json.dumps({k: log[k] for k in ("steps_done", "seconds", "final_valid", "n_parameters")}))
    if args.out is not None:
        manifest = export_bundle(load(args.work), args.data / "tokenizer.json", args.work / "checkpoint", args.out)
        size = sum(f.stat().st_size for f in args.out.iterdir())
        print(json.dumps({"bundle": str(args.out), "bytes": size, "parity": manifest["parity"],
                          "fused_ops": manifest["fused_ops"]}))
    elif args.export_only:
        parser.error("--export-only needs --out")


if __name__ == "__main__":
    main()
