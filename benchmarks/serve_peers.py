"""`edgeinfer serve` under the streamed load test of `../shared/serve-bench` (the harness that sets up vLLM CPU,
llama.cpp's server and a naive transformers server on the same random-weight GPT-2-small checkpoint).

The harness's checkpoint (`$SERVE_BENCH_CACHE/model/hf`, made by its prepare.py) is exported to a bundle once,
then the harness runs edgeinfer beside the peers named by `--servers`, in one run:

    python benchmarks/serve_peers.py --servers naive-hf --levels 1,4,16,64
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT.parent / "shared" / "serve-bench"
CACHE = Path(os.environ.get("SERVE_BENCH_CACHE", Path.home() / ".cache" / "serve-bench"))


def bundle_of(checkpoint: Path, out: Path, quantize: str = "none") -> Path:
    if not (out / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "edgeinfer", "export", "--from-hf", str(checkpoint), "--out", str(out),
                        "--quantize", quantize], check=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="naive-hf", help="peers from the harness's servers.py, comma-separated")
    parser.add_argument("--max-active", type=int, default=16)
    parser.add_argument("--int8", action="store_true", help="also serve the checkpoint exported with int8 weights")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    args, rest = parser.parse_known_args()
    checkpoint = CACHE / "model" / "hf"
    if not (checkpoint / "config.json").is_file():
        raise SystemExit(f"no harness checkpoint at {checkpoint}: run `bash {HARNESS}/setup.sh prep` then its prepare.py")
    bundles = {"edgeinfer": bundle_of(checkpoint, ROOT / "build" / "serve-bench" / "gpt2-rand")}
    if args.int8:
        bundles["edgeinfer-int8"] = bundle_of(checkpoint, ROOT / "build" / "serve-bench" / "gpt2-rand-int8", "int8")
    servers = []
    for name, bundle in bundles.items():
        command = (f"{sys.executable} -m edgeinfer serve --model {{model_name}}={bundle} --host 127.0.0.1 "
                   f"--port {{port}} --threads {{threads}} --device cpu --max-active {args.max_active} --max-queue 256")
        servers += ["--server", f"{name}={command}", "--server-extra", f'{name}={{"ignore_eos": true}}']
    args.out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(HARNESS / "bench.py"), "--servers", args.servers, *servers,
                    "--out", str(args.out), *rest], check=True)


if __name__ == "__main__":
    main()
