"""Operability: per-call metrics and traces, and the hooks that time the stages of a call.

Everything here is off unless configured (``[metrics]``, ``[tracing]``; see docs/OPERATIONS.md)
and then cheap: label children are cached, nothing is locked across a call, and scrape-time
gauges (calls in flight, queue depth, budget spent) cost nothing per request.

What may be recorded is what the host can already see on the wire: the method, the tenant name
(``SealedRequest.tenant`` travels in clear), the status code and timings. Model names, dataset
names, payloads and error messages are sealed and are never put in a label or a span attribute;
a failed stage records only its exception's type.

How a stage finds its call: :meth:`Telemetry.wrap` puts the call in a ``ContextVar`` for its
whole life (gRPC runs every handler in a context of its own), and the decorators :func:`stage`
and :func:`opening` look it up. Outside a call, or with telemetry off, they only call through.
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import grpc

from veil.enclave._capacity import CallClass
from veil.enclave._executor import LifoExecutor
from veil.sdk.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from veil.enclave._metrics import ServiceMetrics

__all__ = [
    "STAGES",
    "LogFormat",
    "ObservabilityConfig",
    "Telemetry",
    "TraceExporter",
    "current_trace_ids",
    "opening",
    "stage",
]

F = TypeVar("F", bound=Callable[..., Any])

# The stages of a sealed call that get a span (and a latency histogram).
STAGES = ("open", "infer", "audit_append", "seal")
# Tenant labels for calls that name no configured tenant (cardinality stays bounded).
NO_TENANT = "none"
UNKNOWN_TENANT = "unknown"
DEFAULT_OTLP_ENDPOINT = "http://127.0.0.1:4318/v1/traces"


class TraceExporter(enum.Enum):
    NONE = "none"
    CONSOLE = "console"  # one JSON object per span on stdout
    OTLP = "otlp"  # OTLP over HTTP/protobuf to ``otlp_endpoint``


class LogFormat(enum.Enum):
    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True)
class ObservabilityConfig:
    """``[metrics]``, ``[tracing]`` and ``[logging]`` of config.toml; all off by default."""

    metrics_address: str | None = None  # "HOST:PORT" of the Prometheus listener; None: off
    tracing: TraceExporter = TraceExporter.NONE
    otlp_endpoint: str = DEFAULT_OTLP_ENDPOINT
    sample_ratio: float = 1.0
    service_name: str = "veil-enclave"
    log_format: LogFormat = LogFormat.TEXT

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        if self.metrics_address is None:
            return None
        return _host_port(self.metrics_address, "metrics.address")

    def canonical(self) -> list[str]:
        """Lines for the measurement: whether anything leaves the enclave, not where to."""
        return [
            f"metrics={'on' if self.metrics_address is not None else 'off'}",
            f"tracing={self.tracing.value}",
        ]

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, source: str = "config") -> ObservabilityConfig:
        metrics = _table(doc, "metrics", source)
        tracing = _table(doc, "tracing", source)
        logging = _table(doc, "logging", source)
        _only(metrics, {"address"}, "metrics", source)
        _only(
            tracing,
            {"exporter", "otlp_endpoint", "sample_ratio", "service_name"},
            "tracing",
            source,
        )
        _only(logging, {"format"}, "logging", source)
        address = metrics.get("address")
        if address is not None:
            if not isinstance(address, str):
                raise ConfigError(f'{source}: metrics.address must be "HOST:PORT"')
            _host_port(address, f"{source}: metrics.address")
        ratio = tracing.get("sample_ratio", cls.sample_ratio)
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 <= ratio <= 1:
            raise ConfigError(f"{source}: tracing.sample_ratio must be a number in [0, 1]")
        endpoint = tracing.get("otlp_endpoint", cls.otlp_endpoint)
        name = tracing.get("service_name", cls.service_name)
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"{source}: tracing.otlp_endpoint must be an http(s) URL")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: tracing.service_name must be a non-empty string")
        return cls(
            metrics_address=address,
            tracing=_choice(
                TraceExporter, tracing.get("exporter", "none"), "tracing.exporter", source
            ),
            otlp_endpoint=endpoint,
            sample_ratio=float(ratio),
            service_name=name,
            log_format=_choice(LogFormat, logging.get("format", "text"), "logging.format", source),
        )


E = TypeVar("E", bound=enum.Enum)


def _table(doc: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    table = doc.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{name}] must be a table")
    return table


def _only(table: Mapping[str, Any], keys: set[str], name: str, source: str) -> None:
    unknown = sorted(set(table) - keys)
    if unknown:
        raise ConfigError(f"{source}: [{name}] has unknown keys {unknown} (known: {sorted(keys)})")


def _choice(kind: type[E], value: object, key: str, source: str) -> E:
    for member in kind:
        if member.value == value:
            return member
    raise ConfigError(f"{source}: {key} must be one of {[m.value for m in kind]}, not {value!r}")


def _host_port(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f'{what} must be "HOST:PORT" (port 0-65535), not {address!r}')
    return host, int(port)


# -- the current call ---------------------------------------------------------------------


class _Call:
    """One call in flight: what its labels and spans need. One small object per call."""

    __slots__ = ("context", "method", "span", "telemetry", "tenant")

    def __init__(self, telemetry: Telemetry, method: _Method, tenant: str) -> None:
        self.telemetry = telemetry
        self.method = method
        self.tenant = tenant
        self.span: Span | None = None
        self.context: Any = None  # the OpenTelemetry context whose parent is ``span``


_CALL: ContextVar[_Call | None] = ContextVar("veil_call", default=None)


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the call this thread serves, when it is traced."""
    call = _CALL.get()
    if call is None or call.span is None:
        return None
    ctx = call.span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def stage(name: str) -> Callable[[F], F]:
    """Time ``fn`` as stage ``name`` of the current call (a child span, a latency histogram)."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}")

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            call = _CALL.get()
            if call is None:
                return fn(*args, **kwargs)
            return call.telemetry._staged(call, name, fn, args, kwargs)

        return cast(F, run)

    return decorate


def opening(fn: F) -> F:
    """Stage ``open`` of a method ``(self, request: SealedRequest, ...) -> OpenedRequest``.

    The call is labelled with the tenant the request authenticated as.
    """

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        call = _CALL.get()
        if call is None:
            return fn(*args, **kwargs)
        opened = call.telemetry._staged(call, "open", fn, args, kwargs)
        tenant = getattr(opened, "tenant", None)
        if isinstance(tenant, str) and tenant in call.telemetry.tenants:
            call.tenant = tenant
        return opened

    return cast(F, run)


# -- the telemetry of one server ----------------------------------------------------------


class _Held(Protocol):
    def held(self, kind: CallClass) -> int: ...


@dataclass(frozen=True)
class _Method:
    """What is known of a method when its handler is registered (computed once)."""

    full: str  # "/veil.v1.InferenceService/Infer"
    label: str  # "veil.v1.InferenceService/Infer"
    service: str
    name: str
    call_class: str


class Telemetry:
    """Metrics and traces of one server; inert (and never on the call path) when both are off."""

    def __init__(
        self,
        config: ObservabilityConfig,
        *,
        tenants: Collection[str] = (),
        tracer_provider: TracerProvider | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.tenants = frozenset(tenants)
        self._clock = clock
        self.metrics: ServiceMetrics | None = None
        if config.metrics_address is not None:
            from veil.enclave._metrics import ServiceMetrics

            self.metrics = ServiceMetrics(STAGES)
        self._provider = tracer_provider
        self._owns_provider = False
        if tracer_provider is None and config.tracing is not TraceExporter.NONE:
            from veil.enclave._tracing import make_tracer_provider

            self._provider = make_tracer_provider(
                config.tracing.value,
                otlp_endpoint=config.otlp_endpoint,
                sample_ratio=config.sample_ratio,
                service_name=config.service_name,
            )
            self._owns_provider = True
        self.tracer: Tracer | None = None
        if self._provider is not None:
            self.tracer = self._provider.get_tracer("veil.enclave")
        self._requests: dict[tuple[str, str, str], Any] = {}
        self.metrics_address: tuple[str, int] | None = None

    @property
    def enabled(self) -> bool:
        return self.metrics is not None or self.tracer is not None

    # -- life -----------------------------------------------------------------------------

    def start(
        self,
        *,
        admission: _Held | None = None,
        executor: LifoExecutor | None = None,
        budget: Callable[[], Mapping[str, tuple[float, float]]] | None = None,
    ) -> None:
        """Register the scrape-time gauges and open the metrics listener, if configured."""
        if self.metrics is None:
            return
        self.metrics.watch(
            in_flight=_in_flight(admission) if admission is not None else None,
            queue_depth=_queue_depth(executor) if executor is not None else None,
            budget=self._budget(budget) if budget is not None else None,
        )
        host_port = self.config.metrics_host_port
        assert host_port is not None
        self.metrics_address = self.metrics.serve(*host_port)

    def close(self) -> None:
        """Stop the metrics listener and flush the span exporter (idempotent)."""
        if self.metrics is not None:
            self.metrics.close()
        if self._provider is not None and self._owns_provider:
            self._provider.shutdown()
            self._owns_provider = False

    def _budget(
        self, budget: Callable[[], Mapping[str, tuple[float, float]]]
    ) -> Callable[[], Mapping[str, tuple[float, float]]]:
        def configured() -> Mapping[str, tuple[float, float]]:
            return {t: spent for t, spent in budget().items() if t in self.tenants}

        return configured

    # -- calls ----------------------------------------------------------------------------

    def wrap(
        self, guard: Callable[[str, Any], Any], classify: Callable[[str], CallClass]
    ) -> Callable[[str, Any], Any]:
        """A handler guard that also instruments what ``guard`` returns (or ``guard`` itself).

        ``classify`` gives a full method name's call class (a span attribute).
        """
        if not self.enabled:
            return guard

        def instrumented(method: str, handler: Any) -> Any:
            return self._instrument(self._method(method, classify(method)), guard(method, handler))

        return instrumented

    def _method(self, full: str, call_class: CallClass) -> _Method:
        label = full.lstrip("/")
        service, _, name = label.partition("/")
        if self.metrics is not None:
            self.metrics.prepare(label)
        return _Method(full, label, service, name, call_class.value)

    def _instrument(self, method: _Method, handler: Any) -> Any:
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, method))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._streaming(handler.unary_stream, method))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._unary(handler.stream_unary, method))
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=self._streaming(handler.stream_stream, method))
        return handler

    def _begin(self, method: _Method, request: Any) -> _Call:
        claimed = getattr(request, "tenant", None)  # unary sealed calls name it in clear
        if not isinstance(claimed, str) or not claimed:
            tenant = NO_TENANT
        else:
            tenant = claimed if claimed in self.tenants else UNKNOWN_TENANT
        call = _Call(self, method, tenant)
        if self.tracer is not None:
            from opentelemetry import trace

            call.span = self.tracer.start_span(
                method.label,
                kind=trace.SpanKind.SERVER,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": method.service,
                    "rpc.method": method.name,
                    "veil.call_class": method.call_class,
                },
            )
            call.context = trace.set_span_in_context(call.span)
        return call

    def _end(
        self, call: _Call, context: grpc.ServicerContext, started: float, failed: bool
    ) -> None:
        elapsed = self._clock() - started
        code = context.code()
        if code is None or code is grpc.StatusCode.OK:
            code = grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK
        status = code.name
        if self.metrics is not None:
            key = (call.method.label, status, call.tenant)
            child = self._requests.get(key)
            if child is None:
                child = self._requests[key] = self.metrics.requests.labels(*key)
            child.inc()
            self.metrics.latency_of(call.method.label).observe(elapsed)
        if call.span is not None:
            from opentelemetry.trace import Status, StatusCode

            call.span.set_attribute("veil.tenant", call.tenant)
            call.span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code is not grpc.StatusCode.OK:
                call.span.set_status(Status(StatusCode.ERROR, status))
            call.span.end()

    def _unary(self, behavior: Callable[..., Any], method: _Method) -> Callable[..., Any]:
        if getattr(behavior, "experimental_non_blocking", False):
            return behavior  # health's Watch: answers through a callback, holds no thread

        @functools.wraps(behavior)
        def run(request: Any, context: grpc.ServicerContext, *args: Any, **kwargs: Any) -> Any:
            started = self._clock()
            call = self._begin(method, request)
            token = _CALL.set(call)
            failed = True
            try:
                result = behavior(request, context, *args, **kwargs)
                failed = False
                return result
            finally:
                _CALL.reset(token)
                self._end(call, context, started, failed)

        return run

    def _streaming(self, behavior: Callable[..., Any], method: _Method) -> Callable[..., Any]:
        if getattr(behavior, "experimental_non_blocking", False):
            return behavior

        @functools.wraps(behavior)
        def run(request: Any, context: grpc.ServicerContext, *args: Any, **kwargs: Any) -> Any:
            started = self._clock()
            call = self._begin(method, request)
            token = _CALL.set(call)
            try:
                responses = behavior(request, context, *args, **kwargs)
            except BaseException:
                _CALL.reset(token)
                self._end(call, context, started, failed=True)
                raise
            _CALL.reset(token)
            return self._stream(call, context, started, responses)

        return run

    def _stream(
        self, call: _Call, context: grpc.ServicerContext, started: float, responses: Any
    ) -> Iterator[Any]:
        token = _CALL.set(call)
        failed = True
        try:
            if responses is not None:
                yield from responses
            failed = False
        finally:
            try:
                _CALL.reset(token)
            except ValueError:  # closed from another context (the stream was dropped)
                _CALL.set(None)
            self._end(call, context, started, failed)

    def _staged(
        self,
        call: _Call,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        span = None
        if self.tracer is not None and call.context is not None:
            span = self.tracer.start_span(name, context=call.context)
        started = self._clock()
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            if span is not None:
                from opentelemetry.trace import Status, StatusCode

                span.set_attribute("error.type", type(exc).__name__)  # never the message
                span.set_status(Status(StatusCode.ERROR))
            raise
        finally:
            if self.metrics is not None:
                self.metrics.stages[name].observe(self._clock() - started)
            if span is not None:
                span.end()


def _in_flight(admission: _Held) -> Callable[[], Mapping[str, int]]:
    def read() -> Mapping[str, int]:
        return {kind.value: admission.held(kind) for kind in CallClass}

    return read


def _queue_depth(executor: LifoExecutor) -> Callable[[], int]:
    # Calls gRPC has accepted that wait for a worker thread (read at scrape time only).
    def read() -> int:
        return executor.queued

    return read
