"""Start the enclave's gRPC server: Veil's services, the standard health service, reflection."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from enclave._config import TlsConfig
from enclave._enclave import Enclave
from enclave._service import (
    AttestationServicer,
    AuditServicer,
    InferenceServicer,
    ModelServicer,
    TrainingServicer,
    WatermarkServicer,
)
from protos.veil.v1 import (
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

SERVICE_NAMES = (
    attestation_pb2.DESCRIPTOR.services_by_name["AttestationService"].full_name,
    models_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    training_pb2.DESCRIPTOR.services_by_name["TrainingService"].full_name,
    watermark_pb2.DESCRIPTOR.services_by_name["WatermarkService"].full_name,
)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    enclave: Enclave
    health: health.HealthServicer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = 2.0) -> None:
        """Drain (up to ``grace`` seconds), stop, then record the stop and flush the audit log."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.enclave.close()


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


def create_server(
    enclave: Enclave,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_workers: int = 16,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
) -> RunningServer:
    """Bind and start; ``port=0`` picks a free port, returned in ``RunningServer.port``."""
    limit = enclave.config.max_message_bytes + 1024 * 1024  # room for the envelope
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="veil"),
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ],
        interceptors=list(interceptors),
    )
    attestation_pb2_grpc.add_AttestationServiceServicer_to_server(
        AttestationServicer(enclave), server
    )
    models_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(enclave), server)
    inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(enclave), server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(enclave), server)
    training_pb2_grpc.add_TrainingServiceServicer_to_server(TrainingServicer(enclave), server)
    watermark_pb2_grpc.add_WatermarkServiceServicer_to_server(WatermarkServicer(enclave), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*SERVICE_NAMES, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{host}:{port}"
    if enclave.config.tls is not None:
        bound = server.add_secure_port(address, server_credentials(enclave.config.tls))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"could not bind {address}")
    server.start()
    return RunningServer(server=server, port=bound, enclave=enclave, health=health_servicer)
