"""The server's Prometheus metrics (prometheus-client), in a registry of its own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("edgeinfer_queue_depth", "requests waiting for a slot", ["model"], registry=r)
        self.active_slots = Gauge("edgeinfer_active_slots", "requests decoding", ["model"], registry=r)
        self.batch_size = Histogram("edgeinfer_batch_size", "rows per decode step", ["model"], registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        self.ttft = Histogram("edgeinfer_time_to_first_token_seconds", "submit to first token", ["model"],
                              registry=r, buckets=LATENCY_BUCKETS)
        self.inter_token = Histogram("edgeinfer_inter_token_seconds", "gap between a request's tokens", ["model"],
                                     registry=r, buckets=LATENCY_BUCKETS)
        self.tokens = Counter("edgeinfer_generated_tokens", "tokens generated", ["model"], registry=r)
        self.draft_tokens = Counter("edgeinfer_draft_tokens", "draft tokens verified (--speculate)", ["model"],
                                    registry=r)
        self.accepted_draft_tokens = Counter("edgeinfer_accepted_draft_tokens", "draft tokens accepted", ["model"],
                                             registry=r)
        self.requests = Counter("edgeinfer_requests", "requests answered", ["endpoint", "status"], registry=r)
