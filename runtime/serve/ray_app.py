"""The same ASGI app as a Ray Serve deployment: N replicas, each with its own engines, behind Ray's HTTP proxy.

`edgeinfer serve --ray --replicas N`, or `serve run edgeinfer.serve.ray_app:build replicas=2` with Ray's CLI.
Needs `pip install 'ray[serve]'`.
"""

from __future__ import annotations

from ray import serve

from .app import ServeConfig, create_app


def deployment(config: ServeConfig, replicas: int = 1, cpus_per_replica: float = 1.0):
    """A bound Ray Serve application: each replica builds the app (and loads the bundles) for itself."""

    @serve.deployment(name="edgeinfer", num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica},
                      max_ongoing_requests=config.max_active + config.max_queue)
    @serve.ingress(lambda: create_app(config))
    class EdgeInfer:
        pass

    return EdgeInfer.bind()


def build(args: dict):
    """`serve run edgeinfer.serve.ray_app:build replicas=N threads=T` on the shipped bundles."""
    from ..commands.serve import parse_models

    replicas = int(args.get("replicas", 1))
    threads = int(args.get("threads", 1))
    return deployment(ServeConfig(parse_models(None), threads=threads, device="cpu"), replicas)
