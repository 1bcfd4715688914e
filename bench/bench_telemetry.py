"""What metrics and tracing cost a sealed call (docs/OPERATIONS.md, "Cost").

Two measurements:

1. the hooks alone: one call through ``Telemetry.wrap`` and the four stage hooks, with a
   handler that does nothing, off / metrics / metrics+tracing (microseconds per call);
2. real sealed inferences against a real server on loopback (simulated TEE, a small MLP), one
   client, rounds of each mode interleaved so that machine noise hits them alike; the median
   per-call time of each mode and its ratio to "off".

Usage: python bench/bench_telemetry.py [--calls 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from veil.enclave._capacity import CallClass
from veil.enclave._config import ServerConfig
from veil.enclave._enclave import Enclave
from veil.enclave._telemetry import ObservabilityConfig, Telemetry, stage
from veil.enclave.server import create_server
from veil.enclave.tee._simulated import SimulatedSnp
from veil.sdk import AttestationPolicy, Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from enclave_support import mlp_model

warnings.filterwarnings("ignore", message="trusting a test root")
KEY = "bench-key-0123456789"


class _Discard(SpanExporter):  # type: ignore[misc]
    """Exports nowhere: what is measured is making and handing off spans, not a collector."""

    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Discard()))
    return provider


def _modes() -> dict[str, Any]:
    return {
        "off": lambda: Telemetry(ObservabilityConfig(), tenants={"default"}),
        "metrics": lambda: Telemetry(
            ObservabilityConfig(metrics_address="127.0.0.1:0"), tenants={"default"}
        ),
        "metrics+tracing": lambda: Telemetry(
            ObservabilityConfig(metrics_address="127.0.0.1:0"),
            tenants={"default"},
            tracer_provider=_provider(),
        ),
    }


# -- 1. the hooks alone -------------------------------------------------------------------


class _Context:
    def code(self) -> grpc.StatusCode | None:
        return None


@stage("open")
def _open() -> None:
    pass


@stage("infer")
def _infer() -> None:
    pass


@stage("audit_append")
def _append() -> None:
    pass


@stage("seal")
def _seal() -> None:
    pass


def _behavior(request: object, context: object) -> None:
    _open()
    _infer()
    _append()
    _seal()


def hooks(calls: int) -> dict[str, float]:
    results = {}
    for mode, make in _modes().items():
        telemetry = make()
        handler = grpc.unary_unary_rpc_method_handler(_behavior)
        wrapped = telemetry.wrap(lambda _m, h: h, lambda _m: CallClass.INFERENCE)(
            "/veil.v1.InferenceService/Infer", handler
        )
        run = wrapped.unary_unary
        context = _Context()
        started = time.perf_counter()
        for _ in range(calls):
            run(None, context)
        results[mode] = (time.perf_counter() - started) / calls * 1e6
        telemetry.close()
    return results


# -- 2. sealed calls ----------------------------------------------------------------------


def _data_dir(root: Path) -> Path:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    (root / "config.toml").write_text(f'[tenants.default]\napi_key_sha256 = "{digest}"\n')
    return root


def sealed(calls: int, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {mode: [] for mode in _modes()}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = _data_dir(Path(tmp))
        tee = SimulatedSnp.load_or_create(data_dir)
        x = np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32)
        for _ in range(rounds):
            for mode, make in _modes().items():
                config = ServerConfig.load(data_dir)
                running = create_server(Enclave(config, tee), telemetry=make())
                try:
                    policy = AttestationPolicy.simulated_for_tests(tee.root_pem)
                    with Client(running.address, api_key=KEY, policy=policy) as client:
                        client.upload_model(mlp_model(), name="bench")
                        for _ in range(20):  # warm: attestation, session, model load
                            client.infer("bench", {"x": x})
                        started = time.perf_counter()
                        for _ in range(calls):
                            client.infer("bench", {"x": x})
                        times[mode].append((time.perf_counter() - started) / calls * 1e3)
                finally:
                    running.stop(grace=None)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="sealed calls per round and mode")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--hook-calls", type=int, default=50_000, help="calls for the hooks alone")
    args = parser.parse_args()
    print("hooks alone (wrap + 4 stages, empty handler), microseconds per call:")
    base = None
    for mode, us in hooks(args.hook_calls).items():
        base = base or us
        print(f"  {mode:16s} {us:8.2f} us   (+{us - base:.2f} us over off)")
    print(f"sealed Infer, 1 client, {args.calls} calls x {args.rounds} rounds (median ms/call):")
    results = sealed(args.calls, args.rounds)
    off = statistics.median(results["off"])
    for mode, per_round in results.items():
        median = statistics.median(per_round)
        print(
            f"  {mode:16s} {median:7.3f} ms   ratio to off {median / off:.3f}   "
            f"rounds {' '.join(f'{t:.3f}' for t in per_round)}"
        )


if __name__ == "__main__":
    main()
