"""A small, generic training loop for the GPT of `gpt.py`: AdamW, warmup + cosine decay, gradient clipping.

Used by the task scripts (train_xiangqi.py, train_chat.py), which own their data. Writes the loss curve as
JSON as it goes and shows progress with tqdm. With `TrainConfig.ema` the validation loss and the model handed back
are those of an exponential moving average of the weights (the raw weights' validation loss is logged beside it).
Deterministic for a given seed and thread count on the CPU.
`TrainConfig.device="cuda"` trains on a GPU (bfloat16 autocast) and hands the model back on the CPU.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .gpt import GPT

# input ids, targets (-100 = ignore), segments, then whatever else the model's loss takes (e.g. the legal moves)
Batch = tuple[torch.Tensor | None, ...]


@dataclass
class TrainConfig:
    steps: int = 2000
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 250
    seed: int = 0
    device: str = "cpu"
    max_seconds: float | None = None  # a time budget: the schedule runs against whichever of it and `steps` is nearer
    ema: float | None = None  # decay of a moving average of the weights kept beside them (e.g. 0.999), or none
    # learning-rate multipliers by parameter-name prefix (a new head beside a trained trunk learns faster), else 1
    lr_scale: dict[str, float] | None = None


def on_device(batch: Batch, device: torch.device) -> Batch:
    """The batch's tensors moved to `device` (None stays None)."""
    return tuple(None if t is None else t.to(device, non_blocking=True) for t in batch)


def autocast(device: torch.device):
    """bfloat16 autocast on a GPU; nothing on the CPU, where float32 is what the bundle computes in."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def schedule_progress(step: int, seconds: float, cfg: TrainConfig) -> float:
    """How far through the decay the run is (1.0: done): by steps, or by time when a budget is nearer."""
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.max_seconds:
        progress = max(progress, seconds / cfg.max_seconds)
    return progress


def learning_rate(step: int, cfg: TrainConfig, progress: float | None = None) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup) if progress is None else progress
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def parameter_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: weight decay on matrices only, and each parameter's learning-rate multiplier (`cfg.lr_scale`)."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        scale = next((s for prefix, s in (cfg.lr_scale or {}).items() if name.startswith(prefix)), 1.0)
        decay = cfg.weight_decay if parameter.dim() >= 2 else 0.0
        groups.setdefault((decay, scale), []).append(parameter)
    return [{"params": params, "weight_decay": decay, "lr_scale": scale} for (decay, scale), params in groups.items()]


@torch.no_grad()
def evaluate(model: GPT, batches: Callable[[], Iterator[Batch]]) -> float:
    """Mean cross-entropy per target token over all batches."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches():
        batch = on_device(batch, device)
        targets = batch[1]
        with autocast(device):
            loss = model.loss(*batch)
        scored = int((targets != -100).sum())
        if scored:  # a batch without targets has a NaN mean and adds nothing
            total += float(loss) * scored
            count += scored
    model.train()
    return total / max(1, count)


def train(
    model: GPT,
    train_batches: Iterator[Batch],
    valid_batches: Callable[[], Iterator[Batch]],
    cfg: TrainConfig,
    out_dir: Path,
    loss_fn: Callable[[GPT, Batch], torch.Tensor] | None = None,
) -> dict:
    """Train in place; returns (and writes to out_dir/training.json) the loss curve and final validation loss.

    The model ends on the CPU whatever `cfg.device` it trained on."""
    torch.manual_seed(cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    model.to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.98))
    loss_fn = loss_fn or (lambda m, b: m.loss(*b))
    averaged = None
    log = {"config": asdict(cfg), "train": [], "valid": []}
    if cfg.ema is not None:
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        log["valid_raw"] = []
    started = time.perf_counter()
    model.train()
    progress = tqdm(range(cfg.steps), desc="train", unit="step", mininterval=2.0)
    smoothed = None
    for step in progress:
        done = schedule_progress(step, time.perf_counter() - started, cfg)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg, done) * group["lr_scale"]
        with autocast(device):
            loss = loss_fn(model, on_device(next(train_batches), device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if averaged is not None:
            averaged.update_parameters(model)
        value = loss.item()
        smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
        if step % 10 == 0:
            log["train"].append([step, round(value, 4)])
            progress.set_postfix(loss=f"{smoothed:.3f}")
        out_of_time = cfg.max_seconds is not None and done >= 1.0
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps or out_of_time:
            valid = evaluate(model, valid_batches)
            if averaged is not None:
                log["valid_raw"].append([step + 1, round(valid, 4)])
                valid = evaluate(averaged.module, valid_batches)
            log["valid"].append([step + 1, round(valid, 4)])
            progress.write(f"step {step + 1}: train {smoothed:.4f} valid {valid:.4f}"
                           + (f" (raw weights {log['valid_raw'][-1][1]:.4f})" if averaged is not None else ""))
            log["seconds"] = round(time.perf_counter() - started, 1)
            (out_dir / "training.json").write_text(json.dumps(log) + "\n")
        if out_of_time:
            break
    log["steps_run"] = step + 1
    if averaged is not None:
        model.load_state_dict(averaged.module.state_dict())
    model.to("cpu")
    log["final_valid_loss"] = log["valid"][-1][1]
    log["seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / "training.json").write_text(json.dumps(log) + "\n")
    return log
