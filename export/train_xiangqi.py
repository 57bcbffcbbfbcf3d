"""Train the Xiangqi move GPT on the self-play records and ship it as the default bundle.

    python -m edgeinfer.export.xiangqi_data --games 5000 --out data/xiangqi     # the records (once)
    python -m edgeinfer.export.train_xiangqi --data data/xiangqi --out runtime/bundles/xiangqi

A game is `[PAD]` followed by its moves' ICCS characters, one token each (20 tokens, see
`edgeinfer.xiangqi.tokens`). The loss covers every move character.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

from edgeinfer.xiangqi.tokens import START, VOCAB, encode_moves

from .gpt import GPT, GPTConfig
from .onnx_export import export_gpt_bundle
from .train_gpt import TrainConfig, evaluate, train


def read_games(path: Path, max_tokens: int) -> list[list[int]]:
    games = []
    for line in path.read_text().splitlines():
        moves = line.split()
        if moves:
            games.append(encode_moves(moves)[:max_tokens])
    return games


def batches(games: list[list[int]], batch_size: int, rng: random.Random):
    """Endless random batches of whole games, right-padded (targets -100 on padding)."""
    while True:
        chosen = rng.sample(games, min(batch_size, len(games)))
        yield collate(chosen)


def collate(games: list[list[int]]):
    width = max(len(g) for g in games)
    ids = torch.full((len(games), width), START, dtype=torch.long)
    targets = torch.full((len(games), width), -100, dtype=torch.long)
    for row, game in enumerate(games):
        ids[row, : len(game)] = torch.tensor(game)
        targets[row, : len(game) - 1] = torch.tensor(game[1:])
    return ids, targets, None


def save_tokenizer(path: Path) -> None:
    """A character-level tokenizers.Tokenizer over the 20 symbols (decoding fuses characters back)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token=VOCAB[START]))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[0-9a-i]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([VOCAB[START]])
    tokenizer.save(str(path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/xiangqi", type=Path)
    parser.add_argument("--out", default="runtime/bundles/xiangqi", type=Path)
    parser.add_argument("--work", default="build/xiangqi", type=Path, help="checkpoint and training log")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--embd", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--positions", type=int, default=1024)
    parser.add_argument("--train-tokens", type=int, default=640, help="games are cut here for training (160 plies)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attention", default="standard", choices=["standard", "contrib"],
                        help="standard: move scoring feeds the whole move tree in one call (query-key mask)")
    parser.add_argument("--export-only", action="store_true", help="re-export the checkpoint in --work")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    splits = {name: read_games(args.data / f"{name}.txt", args.train_tokens) for name in ("train", "valid", "test")}
    print({name: len(games) for name, games in splits.items()}, flush=True)
    cfg = GPTConfig(vocab_size=len(VOCAB), n_positions=args.positions, n_embd=args.embd, n_layer=args.layers,
                    n_head=args.heads, gelu="tanh")
    model = GPT(cfg)

    def eval_batches(name):
        games = splits[name]
        return lambda: (collate(games[i : i + 32]) for i in range(0, len(games), 32))

    if args.export_only:
        model.load_state_dict(torch.load(args.work / "model.pt")["state_dict"])
        log = json.loads((args.work / "training.json").read_text())
    else:
        log = train(model, batches(splits["train"], args.batch_size, random.Random(args.seed)),
                    eval_batches("valid"), TrainConfig(steps=args.steps, seed=args.seed), args.work)
        log["test_loss"] = round(evaluate(model, eval_batches("test")), 4)
        log["batch_size"] = args.batch_size
        log["command"] = " ".join(["python -m edgeinfer.export.train_xiangqi", *(argv if argv is not None else sys.argv[1:])])
        (args.work / "training.json").write_text(json.dumps(log) + "\n")
        torch.save({"config": cfg.to_dict(), "state_dict": model.state_dict()}, args.work / "model.pt")

    tokenizer = args.work / "tokenizer.json"
    save_tokenizer(tokenizer)
    manifest = export_gpt_bundle(
        model, args.out, attention=args.attention, task="xiangqi", tokenizer_file=tokenizer,
        # standard: a query-key mask lets move scoring feed the whole move tree in one call (runtime/xiangqi/mover.py)
        attention_mask="query_key" if args.attention == "standard" else "key",
        special_tokens={"start": START, "pad": START},
        extra={"vocab": VOCAB, "move_score": "sum of the 4 character log-probabilities of each legal move",
               "training": {
            "games": {name: len(games) for name, games in splits.items()},
            "steps": log["config"]["steps"], "batch_size": log["batch_size"], "seconds": log["seconds"],
            "final_valid_loss": log["final_valid_loss"], "test_loss": log["test_loss"],
            "command": log.get("command"),
        }},
    )
    print(f"wrote {args.out}: valid loss {log['final_valid_loss']}, test loss {log['test_loss']}, "
          f"parity {manifest['parity']['max_abs_diff']:.2e}, {log['seconds']} s")


if __name__ == "__main__":
    main()
