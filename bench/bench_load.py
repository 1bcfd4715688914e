"""The load test: 32 client processes against ``veil serve`` for 60 s, on loopback only.

Bounded: every client process keeps one sealed call in flight (attested once, then a loop), for
a fixed time, against a server on 127.0.0.1. Passes when no call failed, the server lived, and
its resident memory (summed over its process tree, sampled every second) stayed flat after
``--warmup-seconds``: the peak of the last 10 s is within 10 % of the peak of the first 10 s
(see ``RssFlat``). Prints the verdicts, throughput and p50/p99; writes ``load.md`` and
``load.json`` to ``--out``. Exit 1 when a verdict fails.

    python bench/bench_load.py                          # 60 s, 32 clients, mlp-64kb
    python bench/bench_load.py --quick                  # 20 s, 8 clients
    python bench/bench_load.py --config bench/batched.toml
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clients import ClientPool
from _models import CASES, write_models
from _report import percentile
from _servers import API_KEY, load_overlay, loadavg, start_veil

BENCH = Path(__file__).resolve().parent
RSS_TOLERANCE = 0.10


@dataclass(frozen=True)
class RssFlat:
    """Whether memory stayed flat. RSS swings with the requests in flight (buffers come and go),
    so single samples are not compared: the peak of the last window is compared with the peak of
    the first one after warm-up. A leak shows as a rising peak."""

    low: int
    high: int
    window: float
    first_peak: int
    last_peak: int

    @property
    def growth(self) -> float:
        return self.last_peak / self.first_peak - 1 if self.first_peak else math.inf

    @property
    def ok(self) -> bool:
        return self.growth <= RSS_TOLERANCE


def rss_flat(samples: list[tuple[float, int]], window: float = 10.0) -> RssFlat:
    """Judge ``(seconds, rss)`` samples taken after warm-up (window: at most a third of them)."""
    if not samples:
        return RssFlat(0, 0, 0.0, 0, 0)
    t_first, t_last = samples[0][0], samples[-1][0]
    window = min(window, max((t_last - t_first) / 3, 1e-9))
    first = [rss for t, rss in samples if t <= t_first + window]
    last = [rss for t, rss in samples if t >= t_last - window]
    values = [rss for _, rss in samples]
    return RssFlat(min(values), max(values), round(window, 1), max(first), max(last))


def _per_call(seconds: float | None, calls: int) -> float:
    return 1000 * seconds / calls if seconds is not None and calls else math.nan


def _sample(
    rss: Callable[[], int], stop: threading.Event, out: list[tuple[float, int]], t0: float
) -> None:
    while not stop.wait(1.0):
        out.append((time.monotonic() - t0, rss()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="20 s, 8 clients, 5 s warm-up")
    parser.add_argument("--seconds", type=float, help="default 60")
    parser.add_argument("--clients", type=int, help="default 32")
    parser.add_argument("--case", choices=list(CASES), default="mlp-64kb")
    parser.add_argument("--warmup-seconds", type=float, help="RSS not judged (default 10)")
    parser.add_argument(
        "--config", type=Path, action="append", default=[], help="TOML overlay (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--name", default="load")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (20.0 if args.quick else 60.0)
    args.clients = args.clients or (8 if args.quick else 32)
    if args.warmup_seconds is None:
        args.warmup_seconds = 5.0 if args.quick else 10.0
    case = CASES[args.case]
    tmp = Path(tempfile.mkdtemp(prefix="veil-load-"))
    started = time.monotonic()
    load_before = loadavg()
    samples: list[tuple[float, int]] = []
    try:
        models = write_models(tmp / "models", [case])
        server = start_veil("load", tmp / "veil" / "data", models, load_overlay(*args.config))
        try:
            print(
                f"veil load test: {args.clients} client processes, {args.seconds:g} s, "
                f"{case.name} ({case.label}), server {server.address} pid {server.pid}",
                flush=True,
            )
            with ClientPool(args.clients, tmp / "clients") as pool:
                stop = threading.Event()
                t0 = time.monotonic()
                sampler = threading.Thread(
                    target=_sample, args=(server.rss_bytes, stop, samples, t0), daemon=True
                )
                sampler.start()
                spec = {
                    "path": "sealed",
                    "case": case.name,
                    "model": case.name,
                    "target": server.address,
                    "api_key": API_KEY,
                    "root_pem": str(server.root_pem),
                }
                try:
                    result = pool.run(
                        args.clients, spec, args.seconds, probes={"server": server.cpu_seconds}
                    )
                finally:
                    stop.set()
                    sampler.join()
            alive = server.alive()
        finally:
            code = server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # The sampler starts before the clients attest and warm up: the timed window opens later.
    load_start = result.started_at - t0
    window = (load_start + args.warmup_seconds, load_start + args.seconds)
    judged = [(t, rss) for t, rss in samples if window[0] <= t <= window[1]]
    flat = rss_flat(judged)
    latencies = sorted(result.latencies_ms)
    verdicts = {
        "zero errors": result.error_count == 0,
        f"server RSS flat after warm-up (peak within {RSS_TOLERANCE:.0%})": flat.ok,
        "server alive to the end": alive,
    }
    ok = all(verdicts.values())
    lines = [
        f"# Load test ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"{args.clients} client processes, each one sealed call in flight, for {args.seconds:g} s "
        f"on 127.0.0.1; `{case.name}` ({case.label}); {os.cpu_count()} cores.",
        f"Command: `{' '.join(['python', 'bench/bench_load.py', *(argv or sys.argv[1:])])}`; "
        f"load average {load_before} at the start, {loadavg()} at the end (other processes on "
        "the machine count).",
        "",
        f"- calls: {result.calls}, errors: {result.error_count}"
        + (f" ({result.errors})" if result.errors else ""),
        f"- throughput {result.rps:.1f} req/s, p50 {percentile(latencies, 0.5):.2f} ms, "
        f"p99 {percentile(latencies, 0.99):.2f} ms; CPU per call: server "
        f"{_per_call(result.probes['server'], result.calls):.2f} ms, clients "
        f"{_per_call(result.client_cpu_s, result.calls):.2f} ms",
        f"- server RSS after {args.warmup_seconds:g} s warm-up ({len(judged)} samples, 1/s): "
        f"{flat.low / 2**20:.1f}-{flat.high / 2**20:.1f} MiB; peak {flat.first_peak / 2**20:.1f} "
        f"MiB in the first {flat.window:g} s, {flat.last_peak / 2**20:.1f} MiB in the last "
        f"{flat.window:g} s ({flat.growth:+.1%}); server exit code {code}",
        "",
        *[f"- {'PASS' if v else 'FAIL'}: {k}" for k, v in verdicts.items()],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text)
    doc = {
        "clients": args.clients,
        "seconds": args.seconds,
        "case": case.name,
        "calls": result.calls,
        "errors": result.errors,
        "rps": result.rps,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "rss_samples": [{"t": round(t, 2), "rss_bytes": rss} for t, rss in samples],
        "rss_peak_growth": flat.growth,
        "verdicts": verdicts,
        "ok": ok,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
