"""`make bench`: what sealing costs, measured the way users feel it.

Every server runs in its own process and every client in its own process, on 127.0.0.1:

- in-process ORT: one process, one ``InferenceSession``, N threads (no server: the upper bound);
- plain gRPC: what a user would write instead (``bench/_plain_server.py``: a generic handler,
  raw tensor bytes, ``ThreadPoolExecutor(16)``, ONNX Runtime), N client processes;
- sealed: the real ``veil serve`` (simulated TEE) driven by the real ``veil.sdk.Client``, which
  attests once per client process and then loops, N client processes;
- sealed+batched: the same with a config overlay that turns dynamic batching on
  (``--batched-config``, by default ``bench/batched.toml`` when it exists).

Cases (``bench/_models.py``): a 1 KB, a 64 KB and a 1 MB payload, and a compute-bound model.
For each case and each count of client processes the paths run back to back (all servers stay up,
so drifting background load hits them alike). Prints p50/p99 and throughput, the ratios
sealed/plain, sealed+batched/plain, sealed/in-process and the issue's goals; writes
``inference.md``, ``inference.json`` and ``inference.png`` (throughput against clients) to
``--out``. Every path must give the same answer; if not, the run fails (exit 1).

    python bench/bench_inference.py            # full: 1, 8, 32 clients, 4 s per run
    python bench/bench_inference.py --quick    # 1 and 8 clients, 1 s per run
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clients import ClientPool, RunResult
from _models import CASES, Case, write_models
from _report import PATHS, Row, goals, markdown, ratios, write_json, write_plot
from _servers import (
    API_KEY,
    ServerProcess,
    VeilServer,
    load_overlay,
    loadavg,
    machine_busy_seconds,
    start_plain,
    start_veil,
)

BENCH = Path(__file__).resolve().parent
DEFAULT_BATCHED = BENCH / "batched.toml"


def _csv(kind: type, choices: object = None) -> Any:
    def parse(text: str) -> list[Any]:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        bad = [v for v in values if choices is not None and v not in choices]  # type: ignore[operator]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {choices}")
        return values

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 and 8 clients, 1 s per run")
    parser.add_argument("--seconds", type=float, help="per run (default 4, --quick 1)")
    parser.add_argument("--clients", type=_csv(int), help="client processes (default 1,8,32)")
    parser.add_argument("--cases", type=_csv(str, CASES), default=list(CASES))
    parser.add_argument("--paths", type=_csv(str, PATHS), default=list(PATHS))
    parser.add_argument("--warmup", type=int, default=5, help="calls per client before timing")
    parser.add_argument(
        "--sealed-config", type=Path, help="TOML overlay for the sealed server's config.toml"
    )
    parser.add_argument(
        "--batched-config",
        type=Path,
        default=DEFAULT_BATCHED if DEFAULT_BATCHED.exists() else None,
        help="TOML overlay that turns batching on (default bench/batched.toml if present; "
        "without one the sealed+batched path is skipped)",
    )
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--name", default="inference", help="file names under --out")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (1.0 if args.quick else 4.0)
    args.clients = args.clients or ([1, 8] if args.quick else [1, 8, 32])
    if "batched" in args.paths and args.batched_config is None:
        print("note: no --batched-config (and no bench/batched.toml): sealed+batched skipped")
        args.paths = [p for p in args.paths if p != "batched"]
    return args


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(BENCH), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(BENCH), "status", "--porcelain"], capture_output=True, text=True
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _spec(
    path: str, case: Case, models: dict[str, Path], servers: dict[str, ServerProcess]
) -> dict[str, Any]:
    spec: dict[str, Any] = {"path": path, "case": case.name, "model": case.name}
    if path == "inprocess":
        spec["model_path"] = str(models[case.name])
    elif path == "plain":
        spec["target"] = servers["plain"].address
    else:
        server = servers[path]
        assert isinstance(server, VeilServer)
        spec.update(path="sealed", target=server.address, api_key=API_KEY)
        spec["root_pem"] = str(server.root_pem)
    return spec


def _other_cores(result: RunResult) -> float:
    """Cores kept busy during the window by processes outside the benchmark (others' load)."""
    ours = result.probes.get("server", 0.0) + result.client_cpu_s
    return max(0.0, result.probes["machine"] - ours) / max(result.window_s, 1e-9)


def _answers_agree(rows: list[Row]) -> list[str]:
    """Cases whose paths gave different answers (batching may reorder float sums: 1e-3)."""
    bad = []
    for case in dict.fromkeys(r.case for r in rows):
        sums = [r.checksum for r in rows if r.case == case]
        ref = sums[0]
        if any(not math.isclose(s, ref, rel_tol=1e-3, abs_tol=1e-3) for s in sums):
            bad.append(f"{case}: {sorted(set(sums))}")
    return bad


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import onnxruntime as ort

    cases = [CASES[name] for name in args.cases]
    tmp = Path(tempfile.mkdtemp(prefix="veil-bench-"))
    servers: dict[str, ServerProcess] = {}
    rows: list[Row] = []
    started = time.monotonic()
    load_before = loadavg()
    print(
        f"veil bench: {len(cases)} case(s) x {len(args.paths)} path(s) x clients {args.clients}, "
        f"{args.seconds:g} s per run; {os.cpu_count()} cores; ONNX Runtime {ort.__version__}",
        flush=True,
    )
    try:
        models = write_models(tmp / "models", cases)
        needs_pool = max(args.clients) if set(args.paths) - {"inprocess"} else 1
        pool = ClientPool(needs_pool, tmp / "clients")
        try:
            if "plain" in args.paths:
                servers["plain"] = start_plain(tmp / "models", tmp)
            if "sealed" in args.paths:
                servers["sealed"] = start_veil(
                    "sealed", tmp / "sealed" / "data", models, load_overlay(args.sealed_config)
                )
            if "batched" in args.paths:
                overlay = load_overlay(args.sealed_config) | load_overlay(args.batched_config)
                servers["batched"] = start_veil(
                    "batched", tmp / "batched" / "data", models, overlay
                )
            print(
                f"servers up ({time.monotonic() - started:.0f} s): "
                + ", ".join(f"{k} {s.address}" for k, s in servers.items()),
                flush=True,
            )
            for case in cases:
                for clients in args.clients:
                    for path in args.paths:
                        spec = _spec(path, case, models, servers)
                        spec["warmup"] = args.warmup
                        probes = {"machine": machine_busy_seconds}
                        if path == "inprocess":
                            result = pool.run(1, spec, args.seconds, threads=clients, probes=probes)
                        else:
                            probes["server"] = servers[path].cpu_seconds
                            result = pool.run(clients, spec, args.seconds, probes=probes)
                        row = Row.of(
                            case=case.name,
                            label=case.label,
                            payload_bytes=case.payload_bytes,
                            path=path,
                            clients=clients,
                            latencies_ms=result.latencies_ms,
                            errors=result.error_count,
                            rps=result.rps,
                            checksum=result.checksums[0],
                            server_cpu_s=result.probes.get("server"),
                            client_cpu_s=result.client_cpu_s,
                            other_cores=_other_cores(result),
                        )
                        rows.append(row)
                        print(
                            f"  {case.name:<12} {clients:>3} cl  {PATHS[path]:<15}"
                            f" {row.rps:9.1f} req/s  p50 {row.p50_ms:8.2f} ms"
                            f"  p99 {row.p99_ms:8.2f} ms  CPU/call server"
                            f" {row.server_cpu_ms:6.2f} client {row.client_cpu_ms:6.2f} ms"
                            + f"  other {row.other_cores:4.2f} cores"
                            + (f"  ERRORS {result.errors}" if result.errors else ""),
                            flush=True,
                        )
            rss = {name: s.rss_bytes() for name, s in servers.items()}
            dead = [name for name, s in servers.items() if not s.alive()]
        finally:
            pool.close()
        if dead:
            print(f"server(s) died during the run: {dead}", file=sys.stderr)
            return 1
    finally:
        codes = {name: s.stop() for name, s in servers.items()}
        shutil.rmtree(tmp, ignore_errors=True)

    header = [
        f"# Inference benchmark ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {_commit()})",
        "",
        f"{os.cpu_count()} cores ({_cpu()}), ONNX Runtime {ort.__version__}, Python "
        f"{platform.python_version()}; {args.seconds:g} s per run after {args.warmup} warm-up "
        "calls per client; servers and clients in their own processes on 127.0.0.1.",
        f"Command: `{' '.join(['python', 'bench/bench_inference.py', *(argv or sys.argv[1:])])}`; "
        f"load average {load_before} at the start, {loadavg()} at the end (other processes on "
        "the machine count).",
        f"Server RSS at the end: {', '.join(f'{k} {v / 2**20:.0f} MiB' for k, v in rss.items())}.",
    ]
    text = markdown(rows, header)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text)
    meta = {
        "cores": os.cpu_count(),
        "cpu": _cpu(),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "commit": _commit(),
        "seconds": args.seconds,
        "clients": args.clients,
        "paths": args.paths,
        "server_rss_bytes": rss,
        "server_exit_codes": codes,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    write_json(args.out / f"{args.name}.json", rows, meta)
    write_plot(
        args.out / f"{args.name}.png",
        rows,
        f"Throughput vs client processes ({os.cpu_count()} cores, {args.seconds:g} s per run)",
    )
    print()
    print(text)
    for q in ratios(rows):
        parts = [
            f"{label} {value:.2f}x"
            for label, value in (
                ("sealed/plain", q.sealed_plain),
                ("batched/plain", q.batched_plain),
                ("sealed/in-process", q.sealed_inprocess),
            )
            if value is not None
        ]
        print(f"ratios {q.case} {q.clients} cl: " + ", ".join(parts))
    missed = [g for g in goals(rows) if not g.met]
    print(f"goals: {len(goals(rows)) - len(missed)} met, {len(missed)} not met")
    print(f"wrote {args.out / args.name}.{{md,json,png}} in {time.monotonic() - started:.0f} s")
    disagree = _answers_agree(rows)
    errors = sum(r.errors for r in rows)
    if disagree:
        print(f"paths gave different answers: {disagree}", file=sys.stderr)
    if errors:
        print(f"{errors} call(s) failed", file=sys.stderr)
    return 1 if disagree or errors else 0


if __name__ == "__main__":
    sys.exit(main())
