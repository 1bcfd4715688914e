"""Prometheus metrics of one server, on a listener of their own (``[metrics] address``).

Each server has its own registry (several can run in one process, as in the tests). Per-call
metrics are counted by ``veil.enclave._telemetry``; the gauges that describe a moment (calls in
flight per call class, calls queued for a worker thread, privacy budget spent per tenant) are
read when scraped, so they cost nothing per request. Names and labels: docs/OPERATIONS.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ServiceMetrics"]

# Whole calls: a listing takes milliseconds, a training stream minutes.
CALL_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0,
)  # fmt: skip
# Stages: an HPKE open or a seal takes tens of microseconds, an fsync'd append milliseconds.
STAGE_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class _Moment(Collector):
    """The scrape-time gauges."""

    def __init__(self) -> None:
        self.in_flight: Callable[[], Mapping[str, int]] | None = None
        self.queue_depth: Callable[[], int] | None = None
        self.budget: Callable[[], Mapping[str, tuple[float, float]]] | None = None

    def describe(self) -> list[Metric]:
        return []  # collected lazily: nothing is read when the collector is registered

    def collect(self) -> Iterator[Metric]:
        if self.in_flight is not None:
            family = GaugeMetricFamily(
                "veil_calls_in_flight",
                "Calls holding an admission slot, per call class",
                labels=["call_class"],
            )
            for kind, held in sorted(self.in_flight().items()):
                family.add_metric([kind], held)
            yield family
        if self.queue_depth is not None:
            yield GaugeMetricFamily(
                "veil_queue_depth",
                "Calls accepted by gRPC that wait for a worker thread",
                value=self.queue_depth(),
            )
        if self.budget is not None:
            epsilon = GaugeMetricFamily(
                "veil_privacy_epsilon_spent",
                "Epsilon charged to the tenant's datasets, summed over its datasets",
                labels=["tenant"],
            )
            delta = GaugeMetricFamily(
                "veil_privacy_delta_spent",
                "Delta charged to the tenant's datasets, summed over its datasets",
                labels=["tenant"],
            )
            for tenant, (eps, dlt) in sorted(self.budget().items()):
                epsilon.add_metric([tenant], eps)
                delta.add_metric([tenant], dlt)
            yield epsilon
            yield delta


class ServiceMetrics:
    """The metric families, and the HTTP listener that serves them."""

    def __init__(self, stages: tuple[str, ...]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "veil_requests",
            "Calls answered, by method, gRPC status and tenant",
            ["method", "status", "tenant"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "veil_request_duration_seconds",
            "Time from a call's start in its handler to its last answer, by method",
            ["method"],
            buckets=CALL_BUCKETS,
            registry=self.registry,
        )
        stage_seconds = Histogram(
            "veil_stage_duration_seconds",
            "Time spent in a stage of a call: open, infer, audit_append (durable), seal",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.stages: Mapping[str, Any] = {name: stage_seconds.labels(name) for name in stages}
        self._latencies: dict[str, Any] = {}
        self._moment = _Moment()
        self.registry.register(self._moment)
        ProcessCollector(registry=self.registry)
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def prepare(self, method: str) -> None:
        """Create ``method``'s latency child once, when its handler is registered."""
        if method not in self._latencies:
            self._latencies[method] = self._latency.labels(method)

    def latency_of(self, method: str) -> Any:
        child = self._latencies.get(method)
        if child is None:
            child = self._latencies[method] = self._latency.labels(method)
        return child

    def watch(
        self,
        *,
        in_flight: Callable[[], Mapping[str, int]] | None,
        queue_depth: Callable[[], int] | None,
        budget: Callable[[], Mapping[str, tuple[float, float]]] | None,
    ) -> None:
        self._moment.in_flight = in_flight
        self._moment.queue_depth = queue_depth
        self._moment.budget = budget

    def serve(self, host: str, port: int) -> tuple[str, int]:
        """Start the listener (port 0 picks one); returns the address it is bound to."""
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return host, int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
