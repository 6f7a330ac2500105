"""Prometheus metrics, one registry per app (so that several apps in one process never collide)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.in_progress = 0  # HTTP requests begun and not yet answered (kept by the middleware)
        Gauge("genserve_requests_in_progress", "HTTP requests begun and not yet answered",
              registry=self.registry).set_function(lambda: self.in_progress)
        self.requests = Counter(
            "genserve_requests", "HTTP requests answered", ["endpoint", "model", "status"], registry=self.registry)
        self.latency = Histogram(
            "genserve_request_seconds", "HTTP request latency", ["endpoint", "model"],
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_images = self._per_operation(
            "genserve_batch_images", "images in one merged forward pass", BATCH_BUCKETS)
        self.batch_requests = self._per_operation(
            "genserve_batch_requests", "requests merged into one forward pass", BATCH_BUCKETS)
        self.queue_seconds = self._per_operation(
            "genserve_queue_seconds", "time a request waited in the queue", LATENCY_BUCKETS)
        self.inference_seconds = self._per_operation(
            "genserve_inference_seconds", "time of one merged forward pass", LATENCY_BUCKETS)
        self.queue_depth = Gauge("genserve_queue_depth", "requests waiting for the worker", registry=self.registry)
        self.rejected = Counter(
            "genserve_rejected", "requests not run: queue_full, timeout, disconnected, stopping", ["reason"],
            registry=self.registry)
        self.skipped = Counter(
            "genserve_skipped_jobs", "queued jobs dropped unrun because their request was abandoned",
            registry=self.registry)

    def watch_queue(self, depth: Callable[[], int], oldest_waits: Callable[[], dict[str, float]]) -> None:
        """Read the queue at each scrape: its depth, and per model the wait of its oldest job (the
        saturation signal for an autoscaler: it grows while a model's work piles up)."""
        self.queue_depth.set_function(depth)
        self.registry.register(_OldestWait(oldest_waits))

    def _per_operation(self, name: str, documentation: str, buckets: tuple) -> Histogram:
        return Histogram(name, documentation, ["model", "operation"], buckets=buckets, registry=self.registry)


class _OldestWait(Collector):
    def __init__(self, oldest_waits: Callable[[], dict[str, float]]):
        self.oldest_waits = oldest_waits

    def collect(self):
        family = GaugeMetricFamily("genserve_queue_oldest_wait_seconds",
                                   "how long the oldest queued request of each model has waited (absent: none waits)",
                                   labels=["model"])
        for model, seconds in sorted(self.oldest_waits().items()):
            family.add_metric([model], seconds)
        yield family
