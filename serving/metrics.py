"""Prometheus metrics of one serving app (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServingMetrics"]


class ServingMetrics:
    """Request counts by status, latency, photos in flight and refused as busy, the loaded model version, reloads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bookcounter_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bookcounter_request_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.model_loaded = Gauge(
            "bookcounter_model_loaded",
            "1 for the registry version of the model that answers /count (no series: none loaded).",
            ["version"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "bookcounter_model_reloads",
            "Models loaded, warmed up and swapped in (the first load included).",
            registry=self.registry,
        )
        self.reload_failures = Counter(
            "bookcounter_model_reload_failures",
            "Champion versions that failed to load or warm up (the previous model kept serving).",
            registry=self.registry,
        )
        self.busy = Counter(
            "bookcounter_count_busy",
            "POST /count requests refused with 503 because BOOKCOUNTER_MAX_IN_FLIGHT photos were in flight.",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "bookcounter_count_in_flight",
            "POST /count requests being read, decoded or counted now.",
            registry=self.registry,
        )
        self.poll_errors = Counter(
            "bookcounter_registry_poll_errors",
            "Polls of the registry's champion alias that raised.",
            registry=self.registry,
        )

    def set_model_version(self, version: str | None) -> None:
        self.model_loaded.clear()
        if version is not None:
            self.model_loaded.labels(version=version).set(1)

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
