"""What ONNX Runtime's intra-op thread pool costs between requests (CPU per run, not wall).

    .venv/bin/python bench/ort_spin.py [--runs 300] [--gap-ms 2]

Runs each benchmark model in one process, one call at a time with a gap between calls (as a
server sees them at low load), with: the default pool (one thread per core, spinning after each
run), one intra-op thread (no pool: what a worker of ``[server] workers = N`` gets on N cores),
and the default pool with ``session.intra_op.allow_spinning = 0``. Prints CPU ms and wall ms per
run; docs/PERFORMANCE.md ("The multi-core model") quotes it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import CASES

VARIANTS = {
    "default pool": {},
    "1 intra-op thread": {"threads": 1},
    "default pool, no spinning": {"spin": 0},
}


def options(threads: int = 0, spin: int = 1) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    parser.add_argument("--cases", default="mlp-1kb,mean-1mb,mlp-64kb")
    args = parser.parse_args()
    gap = args.gap_ms / 1000
    for name in args.cases.split(","):
        case = CASES[name]
        x = case.input()
        for label, variant in VARIANTS.items():
            session = ort.InferenceSession(
                case.model(), options(**variant), providers=["CPUExecutionProvider"]
            )
            feed = {session.get_inputs()[0].name: x}
            for _ in range(20):
                session.run(None, feed)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(args.runs):
                session.run(None, feed)
                time.sleep(gap)
            cpu = (time.process_time() - cpu0) / args.runs * 1000
            wall = ((time.perf_counter() - wall0) / args.runs - gap) * 1000
            print(f"{name:12s} {label:26s} CPU {cpu:6.2f} ms/run  wall {wall:6.2f} ms/run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
