"""What moving the weights into huge pages buys a decoder: `stream_timing.py` with and without `--huge-pages`.

    python benchmarks/huge_pages.py [BUNDLE ...] [--rounds 3] [--batch 1 16]

Each round runs every bundle twice in fresh processes, 4 KiB pages then 2 MiB pages (`CausalLM.use_huge_pages`),
so both see the same machine; the table gives medians over rounds of ms per token, and the seconds and megabytes
the move took. BUNDLE defaults to the fp32 and int8 GPT-2-small bundles of `decode_peers.py` and the Llama-shaped
one of `llama_peers.py` (run those once first). Writes results/huge_pages.json and .md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from driver import BENCH, RESULTS, machine, write_results

HERE = Path(__file__).resolve().parent
DEFAULT_BUNDLES = [BENCH / "peers" / "hf-gpt2-small" / "edgeinfer-contrib",
                   BENCH / "peers" / "hf-gpt2-small" / "edgeinfer-contrib-int8",
                   BENCH / "peers" / "hf-llama-12x768" / "edgeinfer-contrib"]


def one_run(bundle: Path, batches: list[int], huge: bool) -> dict:
    command = [sys.executable, str(HERE / "stream_timing.py"), str(bundle), "--repeats", "3",
               "--batch", *map(str, batches), *(["--huge-pages"] if huge else [])]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="*", type=Path, default=DEFAULT_BUNDLES)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    runs = {(str(b), huge): [] for b in args.bundles for huge in (False, True)}
    for round_ in range(args.rounds):
        for bundle in args.bundles:
            for huge in (False, True):
                runs[str(bundle), huge].append(one_run(bundle, args.batch, huge))
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    def median(bundle: str, huge: bool, key: str) -> float:
        return statistics.median(r[f"B={key}"]["ms_per_token"] if key.isdigit() else r[key] for r in runs[bundle, huge])

    header = ["bundle", *(f"B={b} ms/token 4K → 2M" for b in args.batch), "move s", "moved MB"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for bundle in map(str, args.bundles):
        cells = [Path(bundle).parent.name + "/" + Path(bundle).name]
        for b in args.batch:
            small, huge = median(bundle, False, str(b)), median(bundle, True, str(b))
            cells.append(f"{small:.2f} → {huge:.2f} ({small / huge:.2f}x)")
        cells += [f"{median(bundle, True, 'huge_pages_s'):.2f}", f"{median(bundle, True, 'huge_pages_mb'):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    note = f"medians of {args.rounds} interleaved rounds, fresh processes, 2 threads; {machine()['cpu']}"
    report = {"machine": machine(), "runs": {f"{b} {'huge' if h else '4k'}": r for (b, h), r in runs.items()},
              "skipped": {}}
    write_results(RESULTS, "huge_pages", report, "\n".join(lines), note)


if __name__ == "__main__":
    main()
