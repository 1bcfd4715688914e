"""The coordinator's gRPC server: ``KeyReleaseService`` and the standard health service."""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from veil.enclave.scaleout._coordinator import Coordinator
from veil.sdk.errors import AttestationError, VeilError
from veil.v1 import scaleout_pb2, scaleout_pb2_grpc

__all__ = ["CoordinatorServer", "serve_coordinator"]

log = logging.getLogger("veil.coordinator")
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # evidence with certificates and collateral: well under


class KeyReleaseServicer(scaleout_pb2_grpc.KeyReleaseServiceServicer):  # type: ignore[misc]
    """Thin: decode, call the coordinator, encode; a refusal is a status with one line."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    def Challenge(
        self, request: scaleout_pb2.ChallengeRequest, context: grpc.ServicerContext
    ) -> scaleout_pb2.ChallengeResponse:
        try:
            return self._coordinator.challenge(bytes(request.nonce))
        except VeilError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # unreachable: abort raises

    def Release(
        self, request: scaleout_pb2.ReleaseRequest, context: grpc.ServicerContext
    ) -> scaleout_pb2.ReleaseResponse:
        try:
            return self._coordinator.release(request)
        except AttestationError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"key release refused: {exc}")
            raise
        except VeilError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"key release refused: {exc}")
            raise


@dataclass
class CoordinatorServer:
    server: grpc.Server
    port: int
    coordinator: Coordinator
    health: health.HealthServicer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait(grace + 1)


def serve_coordinator(
    coordinator: Coordinator, *, host: str = "127.0.0.1", port: int = 0
) -> CoordinatorServer:
    """Bind and start; ``port=0`` picks a free port."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="veil-coordinator"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    scaleout_pb2_grpc.add_KeyReleaseServiceServicer_to_server(
        KeyReleaseServicer(coordinator), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return CoordinatorServer(server, bound, coordinator, health_servicer)
