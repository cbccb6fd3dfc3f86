"""Prometheus metrics of a server: requests by route and status, latency, batch sizes, padded tokens per
batch, requests per batch (above 1: batches mixing requests), queue depth and requests in flight.

>>> metrics = Metrics()                      # doctest: +SKIP
>>> metrics.render()[:30]                    # doctest: +SKIP
b'# HELP embedhub_requests_total'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from embedhub.errors import require

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_TOKENS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_REQUESTS = (1, 2, 3, 4, 8, 16, 32, 64, 128)


class Metrics:
    """One server's metrics in their own registry (several servers in one process do not mix)."""

    def __init__(self) -> None:
        prom = require("prometheus_client", "serve", "the server's /metrics")
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("embedhub_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.latency = prom.Histogram("embedhub_request_seconds", "Request latency", ["route"], buckets=_LATENCY,
                                      registry=r)
        self.items = prom.Counter("embedhub_items", "Inputs embedded", ["model", "modality"], registry=r)
        self.batch_rows = prom.Histogram("embedhub_batch_rows", "Rows per model batch", ["model"], buckets=_ROWS,
                                         registry=r)
        self.batch_tokens = prom.Histogram("embedhub_batch_padded_tokens", "Padded tokens per model batch",
                                           ["model"], buckets=_TOKENS, registry=r)
        self.batch_requests = prom.Histogram("embedhub_batch_requests", "Requests whose items share a model batch",
                                             ["model"], buckets=_REQUESTS, registry=r)
        self.batch_seconds = prom.Histogram("embedhub_batch_seconds", "Model time per batch", ["model"],
                                            buckets=_LATENCY, registry=r)
        self.mixed = prom.Counter("embedhub_batches_mixed", "Model batches holding items of several requests",
                                  ["model"], registry=r)
        self.queue = prom.Gauge("embedhub_queue_items", "Items waiting for a model batch", ["model"], registry=r)
        self.in_flight = prom.Gauge("embedhub_in_flight_requests", "Requests being answered", ["model"],
                                    registry=r)
        self.healthy = prom.Gauge("embedhub_engine_healthy", "1 while the model's engine works", ["model"],
                                  registry=r)
        self._prom = prom

    def observer(self, model: str) -> Callable[..., None]:
        """The ``observe`` callback of one model's engine."""

        def observe(event: str, **v: Any) -> None:
            if event == "batch":
                self.batch_rows.labels(model).observe(v["rows"])
                self.batch_tokens.labels(model).observe(v["padded_tokens"])
                self.batch_requests.labels(model).observe(v["requests"])
                self.batch_seconds.labels(model).observe(v["seconds"])
                if v["requests"] > 1:
                    self.mixed.labels(model).inc()

        return observe

    def render(self) -> bytes:
        """The exposition text (``text/plain; version=0.0.4``)."""
        return self._prom.generate_latest(self.registry)

    content_type = "text/plain; version=0.0.4; charset=utf-8"


__all__ = ["Metrics"]
