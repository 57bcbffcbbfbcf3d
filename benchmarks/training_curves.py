"""Loss curves of training runs (the training.json that export/train_gpt.py writes) as one PNG.

    python benchmarks/training_curves.py --out results/xiangqi_loss.png build/xiangqi/training.json [...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plots import figure, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path, help="training.json files; each is labelled by its folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    plt, fig, (ax,) = figure()
    for path in args.logs:
        log = json.loads(path.read_text())
        line = ax.plot(*zip(*log["train"], strict=True), alpha=0.6, label=f"{path.parent.name} train")[0]
        ax.plot(*zip(*log["valid"], strict=True), marker="o", color=line.get_color(),
                label=f"{path.parent.name} valid ({log['seconds'] / 60:.0f} min)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy, nats per token")
    ax.legend(fontsize=7)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {save(plt, fig, args.out)}")


if __name__ == "__main__":
    main()
