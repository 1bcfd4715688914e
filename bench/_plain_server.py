"""The baseline: what a user would write instead of Veil. Run as its own process.

A grpc server with one generic handler and ``ThreadPoolExecutor(16)``; the request is the input
tensor's raw bytes (model name and shape in metadata), the answer the output's raw bytes (shape in
trailing metadata); ONNX Runtime with default session options runs every ``*.onnx`` of a folder.
No attestation, no sealing, no audit.

    python bench/_plain_server.py MODELS_DIR      # prints "listening on 127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np

__all__ = ["METHOD", "MESSAGE_OPTIONS", "main"]

METHOD = "/bench.Plain/Infer"
MESSAGE_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def _handler(sessions: dict[str, Any]) -> grpc.GenericRpcHandler:
    inputs = {name: s.get_inputs()[0].name for name, s in sessions.items()}

    def infer(raw: bytes, context: grpc.ServicerContext) -> bytes:
        meta = dict(context.invocation_metadata())
        name = str(meta.get("x-model", ""))
        session = sessions.get(name)
        if session is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {name!r}")
            raise AssertionError("abort raises")
        shape = [int(d) for d in str(meta["x-shape"]).split(",")]
        x = np.frombuffer(raw, dtype=np.float32).reshape(shape)
        (y,) = session.run(None, {inputs[name]: x})
        context.set_trailing_metadata((("x-shape", ",".join(map(str, y.shape))),))
        return bytes(np.ascontiguousarray(y, np.float32).tobytes())

    return grpc.method_handlers_generic_handler(
        "bench.Plain", {"Infer": grpc.unary_unary_rpc_method_handler(infer)}
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", type=Path, help="folder of NAME.onnx files")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    import onnxruntime as ort  # here: client processes import this module for METHOD only

    sessions = {
        path.stem: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for path in sorted(args.models.glob("*.onnx"))
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=MESSAGE_OPTIONS)
    server.add_generic_rpc_handlers((_handler(sessions),))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"listening on 127.0.0.1:{port}", flush=True)
    stop.wait()
    server.stop(grace=2).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
