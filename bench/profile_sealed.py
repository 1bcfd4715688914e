"""Profile the enclave's sealed inference path, one request at a time, without the network.

    .venv/bin/python bench/profile_sealed.py [--requests 400] [--cprofile]

Builds a real ``Enclave`` (simulated TEE) in a temporary directory, registers the benchmark
models, seals requests with the real SDK core, and calls the servicer's ``Infer`` directly, so
what is timed is exactly what the server does per request between gRPC's deserializer and its
serializer (both included). It prints, per payload, the mean time of every stage of the path
(stage timers wrap the enclave's own functions), the bytes copied/hashed, and with
``--cprofile`` the top functions by own time. ``docs/PERFORMANCE.md`` quotes its output.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import pstats
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from enclave_support import TENANT_KEYS, write_config

from veil.enclave import _enclave as enclave_module
from veil.enclave import _gateway as gateway_module
from veil.enclave._config import ServerConfig
from veil.enclave._enclave import Enclave
from veil.enclave._gateway import OpenedRequest
from veil.enclave._service import InferenceServicer
from veil.enclave.tee._simulated import SimulatedSnp
from veil.sdk import AttestationPolicy
from veil.sdk._core import ClientCore
from veil.sdk.evidence import Evidence, verify_enclave
from veil.sdk.protocol import Method
from veil.v1 import common_pb2, inference_pb2

warnings.filterwarnings("ignore", message="trusting a test root")


def mlp(sizes: list[int], seed: int = 0) -> bytes:
    """A ReLU MLP with fixed random weights, input ``x`` [N, sizes[0]], output ``y``."""
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = rng.normal(scale=a**-0.5, size=(a, b)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}")]
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [out if out == "y" else f"m{i}"]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [f"m{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def tiny(width: int) -> bytes:
    """Tiny compute on a large input: the mean of each row of ``x`` [N, width]."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], keepdims=0, axes=[1])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


CASES = {
    "1 KB (mlp 256-64-10, batch 1)": ("small", mlp([256, 64, 10]), (1, 256)),
    "64 KB (mlp 512-1024-1024-10, batch 32)": ("mlp", mlp([512, 1024, 1024, 10]), (32, 512)),
    "1 MB (256x1024 float32, row mean)": ("tiny", tiny(1024), (256, 1024)),
}


class Stages:
    """Wall time per named stage, accumulated over calls (nested stages count in both)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.total[name] += time.perf_counter() - t0

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        inner = getattr(owner, attr)
        stages = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            with stages.stage(name):
                return inner(*args, **kwargs)

        setattr(owner, attr, timed)


class _Context:
    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def _register(enclave: Enclave, name: str, data: bytes) -> None:
    from veil.enclave._onnx import validate_onnx

    validated = validate_onnx(
        data,
        max_bytes=enclave.config.max_model_bytes,
        allowed_domains=enclave.config.allowed_domains,
        limits=enclave.config.limits,
    )
    enclave.store.register("default", name, data, validated)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--data-dir", type=Path, help="default: a temporary directory")
    parser.add_argument(
        "--no-tune", action="store_true", help="keep glibc's default allocator settings"
    )
    parser.add_argument("--receipt-version", type=int, default=2)
    parser.add_argument(
        "--one-shot",
        action="store_true",
        help="seal every request with HPKE (1.0-1.3) instead of in a session (1.4)",
    )
    args = parser.parse_args()
    if not args.no_tune:
        try:
            from veil.enclave._allocator import tune_allocator
        except ImportError:  # profiling a tree from before issue 12
            print("(this tree has no allocator tuning)")
        else:
            tune_allocator()  # as `veil serve` does
    with tempfile.TemporaryDirectory(prefix="veil-profile-", dir=args.data_dir) as tmp:
        data_dir = Path(tmp)
        write_config(data_dir)
        config = ServerConfig.load(data_dir)
        tee = SimulatedSnp.load_or_create(data_dir)
        enclave = Enclave(config, tee)
        try:
            run(enclave, tee, args)
        finally:
            enclave.close()
    return 0


def attested_core(enclave: Enclave, tee: SimulatedSnp) -> ClientCore:
    """The SDK's client core for the default tenant, attested to ``enclave`` (no network)."""
    core = ClientCore(
        tenant="default",
        api_key=TENANT_KEYS["default"],
        policy=AttestationPolicy.simulated_for_tests(tee.root_pem),
    )
    challenge = core.challenge()
    evidence = enclave.attestation(challenge.nonce)
    core.attested = verify_enclave(
        Evidence.from_proto(evidence.to_proto()),
        nonce=challenge.nonce,
        policy=core.policy,
        now=core.clock(),
        challenge_issued_at=challenge.issued_at,
    )
    return core


def run(enclave: Enclave, tee: SimulatedSnp, args: argparse.Namespace) -> None:
    core = attested_core(enclave, tee)
    attested = core.attested
    assert attested is not None
    if hasattr(core, "receipt_version"):
        core.receipt_version = args.receipt_version
    core.sessions = not args.one_shot
    servicer = InferenceServicer(enclave)
    stages = Stages()
    # Stage timers around the enclave's own steps (module-level names the path calls).
    stages.wrap(enclave.gateway, "open", "open: HPKE, body, replay, API key")
    if hasattr(gateway_module, "_sha256_hex"):  # after issue 12: hashed off the GIL if large
        stages.wrap(gateway_module, "_sha256_hex", "SHA-256 of sealed (request digest)")
    else:
        stages.wrap(gateway_module, "request_digest", "SHA-256 of sealed (request digest)")
    stages.wrap(enclave, "infer", "infer (parse inputs, ORT, outputs, HMAC)")
    stages.wrap(enclave.engine, "run", "infer: ONNX Runtime run + checks")
    stages.wrap(enclave_module, "from_proto", "infer: tensor from proto")
    stages.wrap(enclave_module, "to_proto", "infer: tensor to proto")
    stages.wrap(enclave.audit, "append_with_receipt", "respond: audit append (fsync) + receipt")
    stages.wrap(type(enclave.audit.signer), "sign_note", "respond: Ed25519 signature")
    stages.wrap(enclave.audit, "digest", "HMAC digests for the record")
    if hasattr(enclave.audit, "digest_parts"):
        stages.wrap(enclave.audit, "digest_parts", "HMAC digests for the record")
    stages.wrap(enclave.gateway, "respond", "respond: seal response (AES-GCM)")
    ctx = _Context()
    for label, (name, model, shape) in CASES.items():
        _register(enclave, name, model)
        x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
        message = core.infer_request(name, {"x": x}, None)
        if core.sessions and core.session is None:  # the SDK's way: open a session first (1.4)
            opening = core.seal(attested, Method.INFER, message)
            answer = servicer.Infer(opening.request, ctx)  # type: ignore[arg-type]
            core.open(attested, opening, answer, inference_pb2.InferResponse())
        raws = [
            core.seal(attested, Method.INFER, message).request.SerializeToString()
            for _ in range(args.requests + 20)
        ]
        for raw in raws[:20]:  # warm up: session, caches
            servicer.Infer(common_pb2.SealedRequest.FromString(raw), ctx)  # type: ignore[arg-type]
        stages.total.clear()
        profiler = cProfile.Profile() if args.cprofile else None
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for raw in raws[20:]:
            with stages.stage("gRPC deserialize SealedRequest"):
                request = common_pb2.SealedRequest.FromString(raw)
            response = servicer.Infer(request, ctx)  # type: ignore[arg-type]
            with stages.stage("gRPC serialize SealedResponse"):
                response.SerializeToString()
        if profiler is not None:
            profiler.disable()
        elapsed = time.perf_counter() - t0
        n = args.requests
        print(f"\n## {label}: request {len(raws[0]) / 1024:.1f} KiB on the wire")
        print(f"{'stage':<52} {'µs/request':>11}")
        print(f"{'whole path (servicer + (de)serialization)':<52} {elapsed / n * 1e6:>11.0f}")
        for stage, total in sorted(stages.total.items(), key=lambda kv: -kv[1]):
            print(f"{stage:<52} {total / n * 1e6:>11.0f}")
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
            print(out.getvalue())
        del raws
    _ = (OpenedRequest, inference_pb2, Callable)


if __name__ == "__main__":
    sys.exit(main())
