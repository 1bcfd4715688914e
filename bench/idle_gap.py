"""What an idle gap between calls costs a round trip on this machine (plain gRPC, no Veil code).

    .venv/bin/python bench/idle_gap.py [--calls 400]

Starts the plain baseline server (``bench/_plain_server.py``) with the 1 KB MLP and calls it from
this process one call at a time: back to back, then after sleeping 1 ms, busy-waiting 1 ms and
sleeping 3 ms before each call (the sealed client spends ~0.5-1 ms opening, checking and sealing
between its calls; the sealed server's request thread sleeps in the audit log's fsync). Prints
the round trip's p50 for each. On a VM a vCPU that went idle is slow to wake, so every sleep in a
call's path costs more than its own length; docs/PERFORMANCE.md quotes this.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grpc
from _models import CASES, write_models
from _plain_server import MESSAGE_OPTIONS, METHOD
from _servers import start_plain


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args(argv)
    case = CASES["mlp-1kb"]
    gaps: dict[str, Callable[[], None] | None] = {
        "back to back": None,
        "sleep 1 ms before each call": lambda: time.sleep(0.001),
        "busy 1 ms before each call": lambda: _busy(0.001),
        "sleep 3 ms before each call": lambda: time.sleep(0.003),
    }
    with tempfile.TemporaryDirectory(prefix="veil-gap-") as tmp:
        work = Path(tmp)
        write_models(work / "models", [case])
        server = start_plain(work / "models", work)
        try:
            call = grpc.insecure_channel(server.address, MESSAGE_OPTIONS).unary_unary(METHOD)
            x = case.input().tobytes()
            meta = (("x-model", case.name), ("x-shape", ",".join(map(str, case.shape))))
            for _ in range(50):
                call(x, metadata=meta)
            for label, gap in gaps.items():
                latencies = []
                for _ in range(args.calls):
                    if gap is not None:
                        gap()
                    start = time.perf_counter()
                    call(x, metadata=meta)
                    latencies.append(time.perf_counter() - start)
                p50 = statistics.median(latencies) * 1e3
                print(f"plain gRPC, {case.name}, {label:28s} round trip p50 {p50:.3f} ms")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
