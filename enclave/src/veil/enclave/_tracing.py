"""OpenTelemetry tracing with the official SDK: a tracer provider per server, never global.

The provider is this server's own (``Telemetry`` holds it; nothing calls
``trace.set_tracer_provider``), so an application embedding the enclave keeps its own, and
several servers in one process do not share spans. Spans are exported in batches off the call
path. What a span may carry: docs/OPERATIONS.md.
"""

from __future__ import annotations

import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from veil.sdk.errors import ConfigError

__all__ = ["make_tracer_provider"]


def make_tracer_provider(
    exporter: str, *, otlp_endpoint: str, sample_ratio: float, service_name: str
) -> TracerProvider:
    """A provider exporting to ``exporter`` ("console" or "otlp"), sampling ``sample_ratio``."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(_exporter(exporter, otlp_endpoint)))
    return provider


def _exporter(kind: str, otlp_endpoint: str) -> SpanExporter:
    if kind == "console":
        return ConsoleSpanExporter(out=sys.stdout)  # today's stdout, not the one at import
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=otlp_endpoint, timeout=10)
    raise ConfigError(f"tracing.exporter {kind!r} is not one of console, otlp")
