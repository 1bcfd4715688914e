"""Helpers for tests that run a real enclave: real gRPC server on 127.0.0.1, port 0."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from veil.enclave._config import ServerConfig
from veil.enclave._enclave import Enclave
from veil.enclave.server import RunningServer, create_server
from veil.enclave.tee._simulated import SimulatedSnp
from veil.sdk import AttestationPolicy, Client

TENANT_KEYS = {"default": "key-default-0123456789", "acme": "key-acme-0123456789"}


def write_config(
    data_dir: Path, *, extra_server: str = "", tenants: dict[str, str] | None = None
) -> None:
    lines = ["[server]", extra_server, ""]
    for name, key in (tenants or TENANT_KEYS).items():
        lines += [
            f"[tenants.{name}]",
            f'api_key_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"',
            "",
        ]
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "config.toml").write_text("\n".join(lines))


def mlp_model(inputs: int = 4, hidden: int = 8, outputs: int = 3, seed: int = 0) -> bytes:
    """A small MLP (MatMul-Add-Relu-MatMul-Add-Softmax) with fixed random weights."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(inputs, hidden)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.normal(size=(hidden,)).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(size=(hidden, outputs)).astype(np.float32), "W2"),
        numpy_helper.from_array(rng.normal(size=(outputs,)).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", inputs])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", outputs]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", outputs]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


class CallRecorder(grpc.ServerInterceptor):
    """Records every method the server was asked to run (to prove what a client sent)."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        self.methods.append(handler_call_details.method)
        return continuation(handler_call_details)


@dataclass
class Served:
    running: RunningServer
    data_dir: Path
    root_pem: bytes
    calls: CallRecorder

    @property
    def address(self) -> str:
        return self.running.address

    @property
    def enclave(self) -> Enclave:
        return self.running.enclave

    def policy(self, **kwargs: object) -> AttestationPolicy:
        return AttestationPolicy.simulated_for_tests(self.root_pem, **kwargs)  # type: ignore[arg-type]

    def client(self, tenant: str = "default", **kwargs: object) -> Client:
        kwargs.setdefault("policy", self.policy())
        kwargs.setdefault("api_key", TENANT_KEYS[tenant])
        return Client(self.address, tenant=tenant, **kwargs)  # type: ignore[arg-type]

    def stored_files(self) -> list[Path]:
        return sorted(p for p in (self.data_dir / "models").rglob("*") if p.is_file())

    def assert_healthy(self) -> None:
        """The service still answers: health is SERVING and a sealed call works."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(self.address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        with self.client() as client:
            client.list_models()


def start(data_dir: Path) -> Served:
    config = ServerConfig.load(data_dir)
    tee = SimulatedSnp.load_or_create(data_dir)
    recorder = CallRecorder()
    running = create_server(Enclave(config, tee), interceptors=[recorder])
    return Served(running=running, data_dir=data_dir, root_pem=tee.root_pem, calls=recorder)
