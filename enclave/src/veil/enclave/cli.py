"""``veil serve`` and ``veil measure``: registered into the ``veil`` command by entry points.

They plug into the SDK's one command line (``veil.sdk.cli``): its exit codes, its one error
path, its option conventions; ``veil serve`` listens on ``veil.sdk.cli.DEFAULT_PORT``, the port
a client's ``--target HOST`` dials.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from veil.sdk.cli import DEFAULT_PORT, Outcome, UsageError, add_command, value_type
from veil.sdk.errors import ConfigFailure

__all__ = ["register_measure", "register_serve"]

# Seconds calls in flight get to finish on SIGTERM; `veil serve` exits within this plus
# ``veil.enclave.server.DRAIN_SECONDS`` and the time to close the audit logs.
SHUTDOWN_GRACE_SECONDS = 5.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


_port = value_type(int, lambda v: 0 <= v < 65536, "a port number 0..65535")


def register_serve(sub: Any) -> None:
    parser = add_command(
        sub,
        "serve",
        _serve,
        help="run an enclave service",
        description="Run an enclave service until SIGTERM or SIGINT (SIGHUP rotates its "
        "sealing keys). Prints `veil enclave serving on HOST:PORT` once it serves.",
        json_output=False,  # it serves; it prints no result
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help="port to listen on; 0 picks a free one"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        metavar="D",
        help="the enclave's folder: config.toml, keys, models, audit log (created if new)",
    )
    parser.add_argument(
        "--tee",
        choices=["auto", "sev-snp", "tdx", "simulated"],
        default="auto",
        help="evidence source (auto: SEV-SNP/TDX hardware when present, else simulated)",
    )
    parser.add_argument(
        "--sealing-key-file",
        type=Path,
        metavar="FILE",
        help="32-byte key (mode 0600) for data at rest on hardware without key derivation "
        "(TDX; SEV-SNP without /dev/sev-guest)",
    )
    parser.add_argument(
        "--tdx-collateral",
        type=Path,
        metavar="DIR",
        help="TDX: a folder of Intel PCS collateral to forward with each quote",
    )
    parser.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO", help="log verbosity"
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines as text or as JSON objects (default: config.toml's [logging] format, "
        "itself text)",
    )
    from veil.enclave.scaleout.cli import add_replica_arguments

    add_replica_arguments(parser)  # --state postgres: a replica (docs/SCALE-OUT.md)


def register_measure(sub: Any) -> None:
    parser = add_command(
        sub, "measure", _measure, help="print the measurement clients should pin (hex)"
    )
    parser.add_argument(
        "--data-dir", type=Path, required=True, metavar="D", help="the enclave's folder"
    )
    parser.add_argument(
        "--coordinator-policy",
        type=Path,
        metavar="FILE",
        help="a replica's measurement: the coordinator policy it is started with "
        "(veil serve --state postgres)",
    )


def _serve(args: argparse.Namespace) -> Outcome:
    from veil.enclave._allocator import tune_allocator
    from veil.enclave._config import ensure_config
    from veil.enclave._enclave import Enclave
    from veil.enclave._files import write_atomic
    from veil.enclave._lock import DataDirLock
    from veil.enclave._logs import configure_logging
    from veil.enclave.server import create_server
    from veil.enclave.tee._select import select_provider
    from veil.enclave.tee._simulated import SimulatedSnp

    if args.tdx_collateral is not None and not args.tdx_collateral.is_dir():
        raise UsageError(
            f"--tdx-collateral {args.tdx_collateral}: no such folder",
            reason=ConfigFailure.MISSING_FILE,
        )
    from veil.enclave.scaleout.cli import replica_from_args

    replica = replica_from_args(args)  # --state postgres: checked (and connected) first
    tune_allocator()  # before the first payload: megabyte buffers stay in the heap
    data_dir: Path = args.data_dir
    lock = DataDirLock.acquire(data_dir)  # held until this process ends: one enclave per dir
    config, created_key = ensure_config(data_dir)
    configure_logging(args.log_level, args.log_format or config.observability.log_format)
    if created_key is not None:
        print(f"created tenant 'default'; its API key is in {created_key} (mode 0600)", flush=True)
    selection = select_provider(args.tee, data_dir, sealing_key_file=args.sealing_key_file)
    tee = selection.provider
    if isinstance(tee, SimulatedSnp):
        write_atomic(data_dir / "simulated-root.pem", tee.root_pem, mode=0o644)
        print(
            f"WARNING: simulated TEE ({selection.reason}): evidence proves nothing about "
            f"hardware; clients must pin {data_dir / 'simulated-root.pem'} to trust it",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(
            f"TEE: {selection.reason}; sealing keys from {selection.sealing}",
            file=sys.stderr,
            flush=True,
        )
    collateral = None
    if args.tdx_collateral is not None:
        collateral = {p.name: p.read_bytes() for p in args.tdx_collateral.iterdir() if p.is_file()}
    if replica is not None and config.workers > 1:
        raise UsageError("--state postgres runs one process per replica ([server] workers = 1)")
    enclave = Enclave(config, tee, tdx_collateral=collateral, replica=replica)
    if config.workers > 1:
        return _serve_workers(args, enclave, lock, collateral)
    running = create_server(enclave, host=args.host, port=args.port)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda *_: enclave.rotate_keys())
    print(f"veil enclave serving on {args.host}:{running.port}", flush=True)
    if running.telemetry.metrics_address is not None:
        host, port = running.telemetry.metrics_address
        print(f"metrics on http://{host}:{port}/metrics", flush=True)
    print(f"measurement {enclave.measurement.hex()}", flush=True)
    while not stop.wait(0.5):
        pass
    drained = running.stop(grace=SHUTDOWN_GRACE_SECONDS)
    lock.release()
    print("veil enclave stopped", flush=True)
    if not drained:
        # A call that ignored cancellation would keep the interpreter alive forever; the audit
        # logs are closed and flushed, so leave without it.
        logging.shutdown()
        sys.stderr.flush()
        os._exit(0)
    return Outcome()


def _serve_workers(
    args: argparse.Namespace, enclave: Any, lock: Any, collateral: dict[str, bytes] | None
) -> Outcome:
    """``[server] workers = N``: this process supervises N serving workers (``_workers``)."""
    from veil.enclave._workers import WorkerPool

    pool = WorkerPool(
        enclave,
        host=args.host,
        port=args.port,
        count=enclave.config.workers,
        grace=SHUTDOWN_GRACE_SECONDS,
        tdx_collateral=collateral,
    )
    stop = threading.Event()
    rotate = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: rotate.set())  # rotated here, not in the handler
    try:
        port = pool.start()
    except OSError:
        enclave.close()
        raise
    print(f"veil enclave serving on {args.host}:{port}", flush=True)
    print(f"workers {enclave.config.workers}", flush=True)
    print(f"measurement {enclave.measurement.hex()}", flush=True)
    while not stop.wait(0.2):
        if rotate.is_set():
            rotate.clear()
            pool.rotate_keys()
        pool.watch()
    pool.stop()
    enclave.close()
    lock.release()
    print("veil enclave stopped", flush=True)
    return Outcome()


def _measure(args: argparse.Namespace) -> Outcome:
    from veil.enclave._config import ServerConfig
    from veil.enclave._measurement import measure

    if not (args.data_dir / "config.toml").is_file():
        raise UsageError(
            f"--data-dir {args.data_dir}: no config.toml (start `veil serve --data-dir` once)",
            reason=ConfigFailure.MISSING_FILE,
        )
    raw = measure(ServerConfig.load(args.data_dir))
    if args.coordinator_policy is not None:  # a replica's measurement binds its coordinator
        from veil.enclave.scaleout.cli import measure_replica

        raw = measure_replica(raw, args.coordinator_policy)
    value = raw.hex()
    return Outcome({"measurement": value}, value)
