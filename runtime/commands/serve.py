"""`edgeinfer serve`: the HTTP server (OpenAI-compatible completions, QA, Xiangqi) on uvicorn."""

from __future__ import annotations

import argparse

from ..bundle import MAX_THREADS, Manifest
from ..errors import BundleError, InputError
from ..lm.engine import MAX_SPECULATE
from ..loader import default_bundle

HELP = "serve bundles over HTTP: OpenAI-compatible /v1/completions and /v1/chat/completions, /v1/qa, /v1/xiangqi/move"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", action="append", default=None, metavar="NAME=BUNDLE",
                        help="serve BUNDLE as NAME (repeatable; default: the shipped chat, qa and xiangqi bundles)")
    parser.add_argument("--max-active", type=int, default=16, help="requests decoded together per decoder bundle")
    parser.add_argument("--max-queue", type=int, default=64, help="waiting requests per bundle before 429")
    parser.add_argument("--speculate", type=int, default=0, metavar="K",
                        help="verify up to K draft tokens per decode step (same greedy output; 0: off)")
    parser.add_argument("--draft", action="append", default=None, metavar="NAME=BUNDLE",
                        help="draft for model NAME with BUNDLE, a smaller bundle of its tokenizer (repeatable; "
                             "default: prompt lookup)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads per bundle")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (needs ray[serve])")
    parser.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (with --ray)")


def parse_models(specs: list[str] | None, flag: str = "--model") -> dict[str, str]:
    """NAME=BUNDLE pairs; no --model at all serves the shipped chat, qa and xiangqi bundles."""
    if not specs:
        return {name: str(default_bundle(name)) for name in ("chat", "qa", "xiangqi")} if flag == "--model" else {}
    models = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise InputError(f"{flag} takes NAME=BUNDLE, got {spec!r}")
        if name in models:
            raise InputError(f"{flag} {name!r} is given twice")
        models[name] = folder
    return models


def run(args: argparse.Namespace) -> tuple[dict, str]:
    try:
        import uvicorn

        from ..serve.app import ServeConfig, create_app, load_models
    except ImportError as exc:
        raise InputError(f"serving needs its extra: pip install 'edgeinfer[serve]' ({exc.name} is missing)") from exc
    for name in ("max_active", "max_queue"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.port < 65536:
        raise InputError(f"--port must be in 1..65535, got {args.port}")
    if not args.timeout > 0:  # NaN too: every request would time out at once
        raise InputError(f"--timeout must be a number of seconds > 0, got {args.timeout}")
    if args.threads is not None and not 0 <= args.threads <= MAX_THREADS:  # checked here too: --ray loads later
        raise InputError(f"--threads must be from 0 (onnxruntime's choice) to {MAX_THREADS}, got {args.threads}")
    if not 0 <= args.speculate <= MAX_SPECULATE:
        raise InputError(f"--speculate must be in 0..{MAX_SPECULATE}, got {args.speculate}")
    drafts = parse_models(args.draft, "--draft")
    if drafts and not args.speculate:
        raise InputError("--draft needs --speculate K: the number of draft tokens verified per step")
    config = ServeConfig(parse_models(args.model), max_active=args.max_active, max_queue=args.max_queue,
                         speculate=args.speculate, drafts=drafts, threads=args.threads, device=args.device,
                         timeout_s=args.timeout)
    if args.ray:
        # each replica opens the bundles: here only their manifests
        for what, name, folder in [*(("model", *item) for item in config.models.items()),
                                   *(("draft for", *item) for item in config.drafts.items())]:
            try:
                Manifest.read(folder)
            except BundleError as exc:
                raise BundleError(f"{what} {name}: {exc}") from exc
        return serve_on_ray(config, args.host, args.port, args.replicas), ""
    uvicorn.run(create_app(config, load_models(config)), host=args.host, port=args.port, log_level="warning",
                timeout_graceful_shutdown=30)
    return {"stopped": True}, ""


def serve_on_ray(config, host: str, port: int, replicas: int) -> dict:
    """Start a local Ray instance, run the deployment until SIGTERM or Ctrl-C, then shut Ray down."""
    import signal
    import threading

    try:
        import ray
        from ray import serve

        from ..serve.ray_app import deployment
    except ImportError as exc:
        raise InputError(f"--ray needs Ray Serve: pip install 'ray[serve]' ({exc.name} is missing)") from exc
    if replicas < 1:
        raise InputError("--replicas must be >= 1")
    stop = threading.Event()
    ray.init(num_cpus=max(replicas, 1), object_store_memory=200 * 2**20, include_dashboard=False,
             log_to_driver=False)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # after ray.init, which installs handlers of its own
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(config, replicas), route_prefix="/")
        print(f"edgeinfer serve: {replicas} Ray Serve replicas on http://{host}:{port}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return {"stopped": True, "replicas": replicas}
