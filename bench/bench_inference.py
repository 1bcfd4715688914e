"""`make bench`: what sealing costs. One run, same machine, same models, same ONNX Runtime.

For a small and a medium model, at 1 and 16 concurrent clients, measures p50/p99 latency and
throughput of (a) in-process ONNX Runtime, (b) plain gRPC (same engine, no attestation, no
sealing), (c) Veil's sealed path; prints the ratios sealed/plain and sealed/in-process.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from enclave_support import TENANT_KEYS, mlp_model, start, write_config

from veil.enclave.tee._simulated import SimulatedSnp
from veil.sdk import Client
from veil.sdk.tensors import from_proto, to_proto
from veil.v1 import inference_pb2

warnings.filterwarnings("ignore", message="trusting a test root")
PLAIN_METHOD = "/bench.Plain/Infer"


def plain_server(served) -> tuple[grpc.Server, int]:  # type: ignore[no-untyped-def]
    """The same inference engine behind plain, unsealed gRPC: the baseline for sealing's cost."""
    enclave = served.enclave

    def infer(raw: bytes, context: grpc.ServicerContext) -> bytes:
        req = inference_pb2.InferRequest.FromString(raw)
        record = enclave.store.resolve("default", req.model)
        inputs = {n: from_proto(t) for n, t in req.inputs.items()}
        out = enclave.engine.run(
            f"default/{record.ref}", lambda: enclave.store.load(record), inputs
        )
        return inference_pb2.InferResponse(
            model=record.ref, outputs={n: to_proto(a) for n, a in out.items()}
        ).SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "bench.Plain", {"Infer": grpc.unary_unary_rpc_method_handler(infer)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def run_load(
    make_call: Callable[[], Callable[[], object]], clients: int, seconds: float
) -> dict[str, float]:
    """Each client thread gets its own call (and channel); returns latency percentiles and rate."""
    latencies: list[float] = []
    lock = threading.Lock()
    calls = [make_call() for _ in range(clients)]
    for call in calls:  # warm up: attestation, sessions, connections
        call()
    stop = time.perf_counter() + seconds
    barrier = threading.Barrier(clients)

    def worker(call: Callable[[], object]) -> None:
        local = []
        barrier.wait()
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            call()
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    start_t = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start_t
    latencies.sort()
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "rps": len(latencies) / elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0, help="per configuration")
    args = parser.parse_args()
    models = {
        "small (4-8-3 MLP, batch 1)": (
            mlp_model(),
            np.random.default_rng(0).normal(size=(1, 4)).astype(np.float32),
        ),
        "medium (512-1024-1024-10 MLP, batch 32)": (
            mlp_model(inputs=512, hidden=1024, outputs=10),
            np.random.default_rng(0).normal(size=(32, 512)).astype(np.float32),
        ),
    }
    tmp = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    try:
        SimulatedSnp.load_or_create(tmp / "template")
        data = tmp / "data"
        shutil.copytree(tmp / "template" / "simulated-tee", data / "simulated-tee")
        write_config(data)
        served = start(data)
        plain, plain_port = plain_server(served)
        print(f"ONNX Runtime {ort.__version__}, providers {served.enclave.engine.providers}")
        rows = []
        with served.client() as setup:
            for label, (model, x) in models.items():
                name = "m" + str(len(rows))
                setup.upload_model(model, name)
                session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

                def in_process(session=session, x=x):  # type: ignore[no-untyped-def]
                    return lambda: session.run(None, {"x": x})

                def plain_call(name=name, x=x):  # type: ignore[no-untyped-def]
                    channel = grpc.insecure_channel(f"127.0.0.1:{plain_port}")
                    stub = channel.unary_unary(PLAIN_METHOD)
                    raw = inference_pb2.InferRequest(
                        model=name, inputs={"x": to_proto(x)}
                    ).SerializeToString()
                    return lambda: stub(raw, timeout=30)

                def sealed_call(name=name, x=x):  # type: ignore[no-untyped-def]
                    client = Client(
                        served.address, api_key=TENANT_KEYS["default"], policy=served.policy()
                    )
                    return lambda: client.infer(name, {"x": x})

                for clients in (1, 16):
                    result = {
                        path: run_load(factory, clients, args.seconds)
                        for path, factory in (
                            ("in-process", in_process),
                            ("plain gRPC", plain_call),
                            ("sealed", sealed_call),
                        )
                    }
                    rows.append((label, clients, result))
                    print(f"\n{label}, {clients} client(s)")
                    for path, r in result.items():
                        print(
                            f"  {path:<11} p50 {r['p50_ms']:8.3f} ms   p99 {r['p99_ms']:8.3f} ms"
                            f"   {r['rps']:9.1f} req/s"
                        )
                    s, p, i = result["sealed"], result["plain gRPC"], result["in-process"]
                    print(
                        f"  ratios      sealed/plain: p50 {s['p50_ms'] / p['p50_ms']:.2f}x, "
                        f"throughput {s['rps'] / p['rps']:.2f}x;  sealed/in-process: "
                        f"p50 {s['p50_ms'] / i['p50_ms']:.2f}x, "
                        f"throughput {s['rps'] / i['rps']:.2f}x"
                    )
        plain.stop(None)
        served.running.stop(grace=None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
