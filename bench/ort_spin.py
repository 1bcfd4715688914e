"""What ONNX Runtime's intra-op thread pool costs between requests (CPU per run, not wall).

    .venv/bin/python bench/ort_spin.py [--runs 300] [--gap-ms 2] [--fsync]

Runs each benchmark model in one process, one call at a time with a gap between calls (as a
server sees them at low load), with: the default pool (one thread per core, spinning after each
run), one intra-op thread (no pool: what a worker of ``[server] workers = N`` gets on N cores),
the default pool with ``session.intra_op.allow_spinning = 0``, and the pool ``veil serve`` builds
(no spinning, its threads allowed on every CPU, ``intra_op_layout``) with and without spinning
during a run only (``session.force_spinning_stop``). ``--fsync`` precedes each run with what a
sealed call does before it answers: a 600-byte append and ``fdatasync`` (on the current
directory's disk). Prints CPU ms and wall ms per run; docs/PERFORMANCE.md quotes it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import CASES

from veil.enclave._onnx import intra_op_layout

VARIANTS: dict[str, dict[str, object]] = {
    "default pool": {},
    "1 intra-op thread": {"threads": 1},
    "default pool, no spinning": {"spin": 0},
    "veil's pool (every CPU, no spin)": {"spin": 0, "every_cpu": True},
    "every CPU, spin in runs only": {"every_cpu": True, "stop": True},
}


def options(
    threads: int = 0, spin: int = 1, every_cpu: bool = False, stop: bool = False
) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if every_cpu:
        threads, affinities = intra_op_layout(0)
        if affinities:
            opts.add_session_config_entry("session.intra_op_thread_affinities", affinities)
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if stop:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    parser.add_argument("--cases", default="mlp-1kb,mean-1mb,mlp-64kb")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--fsync", action="store_true", help="append + fdatasync before each run")
    args = parser.parse_args()
    gap = args.gap_ms / 1000
    log = tempfile.NamedTemporaryFile(dir=".", prefix=".ort-spin-", delete=True)  # noqa: SIM115
    line = b"x" * 599 + b"\n"

    def before() -> None:
        if args.fsync:
            os.write(log.fileno(), line)
            os.fdatasync(log.fileno())

    for name in args.cases.split(","):
        case = CASES[name]
        x = case.input()
        sessions = {
            label: ort.InferenceSession(
                case.model(), options(**variant), providers=["CPUExecutionProvider"]
            )
            for label, variant in VARIANTS.items()
        }
        feed = {"x": x}
        cpu = dict.fromkeys(sessions, 0.0)
        walls: dict[str, list[float]] = {label: [] for label in sessions}
        labels = list(sessions)
        # Interleaved rounds: this VM's speed drifts by 2x within minutes.
        for round_ in range(args.rounds):
            for label in labels[round_ % len(labels) :] + labels[: round_ % len(labels)]:
                session = sessions[label]
                for _ in range(5):
                    session.run(None, feed)
                cpu0 = time.process_time()  # the whole loop: a spinning pool burns CPU in gaps
                for _ in range(args.runs // args.rounds):
                    before()
                    wall0 = time.perf_counter()
                    session.run(None, feed)
                    walls[label].append(time.perf_counter() - wall0)
                    time.sleep(gap)
                cpu[label] += time.process_time() - cpu0
        for label in labels:
            runs = len(walls[label])
            print(
                f"{name:12s} {label:34s} CPU {cpu[label] / runs * 1000:6.2f} ms/run  "
                f"wall p50 {statistics.median(walls[label]) * 1000:6.2f} ms/run"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
