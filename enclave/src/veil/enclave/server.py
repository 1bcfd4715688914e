"""Start the enclave's gRPC server: Veil's services, the standard health service, reflection.

Every method handler, ours and gRPC's own (health, reflection), is guarded before it is
registered:

- its request bytes are parsed by a deserializer that never raises: bytes that do not parse
  become INVALID_ARGUMENT (reason ``malformed``), with no traceback in the log;
- it takes a slot of its call class (``veil.enclave._capacity``) for the life of the call, or is
  refused at once with RESOURCE_EXHAUSTED (``overloaded``); attestation and health are never
  capped and run on threads the capped classes cannot reach;
- a request stream is cancelled when its client leaves it idle for ``stream_idle_seconds``.

The transport is bounded too: streams per connection, calls in flight, keepalive pings (a
client that pings too often is disconnected).
"""

from __future__ import annotations

import errno
import functools
import logging
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from veil.enclave._capacity import Admission, CallClass, IdleWatchdog, Slot
from veil.enclave._config import TlsConfig
from veil.enclave._enclave import Enclave
from veil.enclave._executor import LifoExecutor
from veil.enclave._limits import Limits
from veil.enclave._service import (
    AttestationServicer,
    AuditServicer,
    InferenceServicer,
    ModelServicer,
    TrainingServicer,
    WatermarkServicer,
)
from veil.enclave._status import abort_with
from veil.enclave._telemetry import Telemetry
from veil.sdk.errors import ProtocolError, VeilError
from veil.v1 import (
    attestation_pb2,
    attestation_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
    watermark_pb2,
    watermark_pb2_grpc,
)

__all__ = ["RunningServer", "create_server", "server_credentials"]

log = logging.getLogger("veil.enclave")

SERVICE_NAMES = (
    attestation_pb2.DESCRIPTOR.services_by_name["AttestationService"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
    watermark_pb2.DESCRIPTOR.services_by_name["WatermarkService"].full_name,
)
# Seconds that calls still running after the grace period get to return once cancelled.
DRAIN_SECONDS = 2.0
# A client may ping at most this often while no data flows; two pings faster and it is cut off.
MIN_PING_INTERVAL_MS = 10_000
MAX_PING_STRIKES = 2


def _method(module: Any, service: str, method: str) -> str:
    """``/package.Service/Method``, checked against the descriptor (a typo fails at import)."""
    desc = module.DESCRIPTOR.services_by_name[service]
    return f"/{desc.full_name}/{desc.methods_by_name[method].name}"


# Service-wide classes, then per-method ones; a method in neither is SEALED.
_SERVICE_CLASSES: Mapping[str, CallClass] = {
    attestation_pb2.DESCRIPTOR.services_by_name["AttestationService"].full_name: CallClass.OPEN,
    health.SERVICE_NAME: CallClass.OPEN,
    reflection.SERVICE_NAME: CallClass.REFLECTION,
}
_METHOD_CLASSES: Mapping[str, CallClass] = {
    _method(models_pb2, "ModelService", "UploadModel"): CallClass.UPLOAD,
    _method(training_pb2, "TrainingService", "UploadDataset"): CallClass.UPLOAD,
    _method(inference_pb2, "InferenceService", "Infer"): CallClass.INFERENCE,
    _method(watermark_pb2, "WatermarkService", "EmbedWatermark"): CallClass.INFERENCE,
    _method(watermark_pb2, "WatermarkService", "VerifyWatermark"): CallClass.INFERENCE,
    _method(training_pb2, "TrainingService", "Train"): CallClass.TRAINING,
}


def call_class(method: str) -> CallClass:
    """The admission class of a full method name (``/package.Service/Method``)."""
    found = _METHOD_CLASSES.get(method)
    if found is not None:
        return found
    return _SERVICE_CLASSES.get(method.split("/")[1], CallClass.SEALED)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    enclave: Enclave
    health: health.HealthServicer
    admission: Admission
    watchdog: IdleWatchdog
    executor: LifoExecutor
    telemetry: Telemetry

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = 2.0) -> bool:
        """Stop within ``grace`` (None: 0) plus ``DRAIN_SECONDS`` seconds; close the enclave.

        Health turns NOT_SERVING and new calls are refused at once; calls in flight get
        ``grace`` seconds to finish. Then inferences still running are terminated, every call
        left is cancelled, and they get ``DRAIN_SECONDS`` to return. The enclave is closed
        (stop recorded, audit logs flushed) in every case. Returns False if some call still had
        not returned: its thread is stuck where cancellation cannot reach (a job between two
        progress points, native code), and the process should exit without waiting for it.
        """
        grace = grace or 0.0
        self.health.enter_graceful_shutdown()
        self.admission.close()
        done = self.server.stop(grace)  # no new calls; gRPC cancels the rest after `grace`
        done.wait(grace)
        self.enclave.engine.terminate_all()
        done.wait(DRAIN_SECONDS)
        drained = self.admission.wait_idle(DRAIN_SECONDS)
        self.watchdog.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if not drained:
            log.warning("calls still running after the grace period were abandoned")
        self.enclave.close()
        self.telemetry.close()
        return drained


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """TLS, or mutual TLS when a client CA is configured."""
    key = tls.key_file.read_bytes()
    cert = tls.cert_file.read_bytes()
    if tls.client_ca_file is None:
        return grpc.ssl_server_credentials([(key, cert)])
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=tls.client_ca_file.read_bytes(),
        require_client_auth=True,
    )


def server_options(
    limits: Limits, max_message_bytes: int, *, reuse_port: bool = False
) -> list[tuple[str, int]]:
    """Transport bounds: message sizes, streams per connection, keepalive and ping policy.

    ``reuse_port``: a worker process of ``[server] workers = N`` shares its supervisor's port
    (``veil.enclave._workers``); otherwise the port is never shared.
    """
    keepalive_ms = int(limits.keepalive_seconds * 1000)
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_concurrent_streams", limits.max_streams_per_connection),
        ("grpc.keepalive_time_ms", keepalive_ms),
        ("grpc.keepalive_timeout_ms", min(keepalive_ms, 20_000)),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        # A port another enclave holds is refused, not shared (grpc sets SO_REUSEPORT).
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


def create_server(
    enclave: Enclave,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    telemetry: Telemetry | None = None,
    reuse_port: bool = False,
) -> RunningServer:
    """Bind and start; ``port=0`` picks a free port, returned in ``RunningServer.port``.

    ``reuse_port``: join the SO_REUSEPORT group of a port the caller reserved (a worker
    process; the kernel spreads connections over the group).

    The worker threads are sized from ``config.limits``: one per admission slot, plus
    ``RESERVED_WORKERS`` that only attestation and health can use.
    """
    limits = enclave.config.limits
    admission = Admission.from_limits(limits)
    watchdog = IdleWatchdog(limits.stream_idle_seconds)
    executor = LifoExecutor(admission.workers, thread_name_prefix="veil")
    server = grpc.server(
        executor,
        options=server_options(
            limits, enclave.config.max_message_bytes + 1024 * 1024, reuse_port=reuse_port
        ),
        interceptors=list(interceptors),
        maximum_concurrent_rpcs=limits.max_concurrent_rpcs,
    )
    telemetry = telemetry or Telemetry(enclave.config.observability, tenants=enclave.config.tenants)
    guarded = _Registrar(server, telemetry.wrap(_Guard(admission, watchdog), call_class))
    attestation_pb2_grpc.add_AttestationServiceServicer_to_server(
        AttestationServicer(enclave), guarded
    )
    models_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(enclave), guarded)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(enclave), guarded)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(enclave), guarded)
    training_pb2_grpc.add_TrainingServiceServicer_to_server(TrainingServicer(enclave), guarded)
    watermark_pb2_grpc.add_WatermarkServiceServicer_to_server(WatermarkServicer(enclave), guarded)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, guarded)
    for name in (*SERVICE_NAMES, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if enclave.config.reflection:  # off by default: a debugging aid, not for production
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), guarded
        )
    telemetry.start(
        admission=admission,
        executor=executor,
        budget=lambda: enclave.training.ledger.spent_by_tenant(),
    )
    address = f"{host}:{port}"
    try:
        if enclave.config.tls is not None:
            bound = server.add_secure_port(address, server_credentials(enclave.config.tls))
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises on a failed bind; older releases return 0
        bound = 0
    if bound == 0:
        watchdog.close()
        telemetry.close()
        raise OSError(errno.EADDRINUSE, f"could not bind {address} (in use?)")
    server.start()
    return RunningServer(
        server=server,
        port=bound,
        enclave=enclave,
        health=health_servicer,
        admission=admission,
        watchdog=watchdog,
        executor=executor,
        telemetry=telemetry,
    )


# -- guarding handlers --------------------------------------------------------------------


class _Malformed:
    """What a request that did not parse becomes (gRPC would log a traceback and say INTERNAL)."""


_MALFORMED = _Malformed()


def _safe(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # DecodeError, or whatever a generated parser raises on junk
            return _MALFORMED

    return parse


def _malformed() -> ProtocolError:
    return ProtocolError("request is not a valid message for this method")


class _Guard:
    """Wraps one method handler: safe parsing, an admission slot, idle watching of requests."""

    def __init__(self, admission: Admission, watchdog: IdleWatchdog) -> None:
        self._admission = admission
        self._watchdog = watchdog

    def __call__(self, method: str, handler: Any) -> Any:
        kind = call_class(method)
        fields: dict[str, Any] = {"request_deserializer": _safe(handler.request_deserializer)}
        if handler.unary_unary is not None:
            fields["unary_unary"] = self._unary(handler.unary_unary, kind)
        elif handler.unary_stream is not None:
            fields["unary_stream"] = self._unary_stream(handler.unary_stream, kind)
        elif handler.stream_unary is not None:
            fields["stream_unary"] = self._stream_unary(handler.stream_unary, kind)
        elif handler.stream_stream is not None:
            fields["stream_stream"] = self._stream_stream(handler.stream_stream, kind)
        return handler._replace(**fields)

    def _admit(self, kind: CallClass, context: grpc.ServicerContext) -> Slot:
        try:
            return self._admission.enter(kind)
        except VeilError as exc:
            abort_with(context, exc)

    def _requests(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        for request in self._watchdog.watch(requests, context):
            if request is _MALFORMED:
                raise _malformed()
            yield request

    def _unary(self, behavior: Callable[..., Any], kind: CallClass) -> Callable[..., Any]:
        @functools.wraps(behavior)  # keeps gRPC's markers (health's non-blocking Watch)
        def run(request: Any, context: grpc.ServicerContext, *args: Any, **kwargs: Any) -> Any:
            if request is _MALFORMED:
                abort_with(context, _malformed())
            slot = self._admit(kind, context)
            try:
                return behavior(request, context, *args, **kwargs)
            except VeilError as exc:  # gRPC's own services do not map our errors
                abort_with(context, exc)
            finally:
                slot.release()

        return run

    def _unary_stream(self, behavior: Callable[..., Any], kind: CallClass) -> Callable[..., Any]:
        if kind is CallClass.OPEN:  # health's Watch: no slot to hold, and it may be non-blocking
            return self._unary(behavior, kind)

        @functools.wraps(behavior)
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            if request is _MALFORMED:
                abort_with(context, _malformed())
            slot = self._admit(kind, context)
            return _holding(slot, context, lambda: behavior(request, context))

        return run

    def _stream_unary(self, behavior: Callable[..., Any], kind: CallClass) -> Callable[..., Any]:
        @functools.wraps(behavior)
        def run(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            slot = self._admit(kind, context)
            try:
                return behavior(self._requests(requests, context), context)
            except VeilError as exc:
                abort_with(context, exc)
            finally:
                slot.release()

        return run

    def _stream_stream(self, behavior: Callable[..., Any], kind: CallClass) -> Callable[..., Any]:
        @functools.wraps(behavior)
        def run(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            slot = self._admit(kind, context)
            return _holding(
                slot, context, lambda: behavior(self._requests(requests, context), context)
            )

        return run


def _holding(
    slot: Slot, context: grpc.ServicerContext, start: Callable[[], Iterator[Any]]
) -> Iterator[Any]:
    """The responses of ``start()``, with ``slot`` held until the stream ends.

    Released when the stream ends, fails or is closed, and also if it is dropped before it
    ever started (a generator that never ran has no ``finally`` to run).
    """

    def responses() -> Iterator[Any]:
        try:
            yield from start()
        except VeilError as exc:
            abort_with(context, exc)
        finally:
            slot.release()

    stream = responses()
    weakref.finalize(stream, slot.release)
    return stream


class _GuardedGenericHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, inner: Any, guard: Callable[[str, Any], Any]) -> None:
        self._inner = inner
        self._guard = guard

    def service(self, handler_call_details: Any) -> Any:
        handler = self._inner.service(handler_call_details)
        return None if handler is None else self._guard(handler_call_details.method, handler)


class _Registrar:
    """Stands in for the server while services register, so every handler gets guarded."""

    def __init__(self, server: grpc.Server, guard: Callable[[str, Any], Any]) -> None:
        self._server = server
        self._guard = guard

    def add_generic_rpc_handlers(self, handlers: Sequence[Any]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_GuardedGenericHandler(h, self._guard) for h in handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self._server.add_registered_method_handlers(
            service,
            {name: self._guard(f"/{service}/{name}", h) for name, h in handlers.items()},
        )
