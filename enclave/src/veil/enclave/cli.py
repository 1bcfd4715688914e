"""``veil serve`` and ``veil measure``: registered into the ``veil`` command by entry points."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["register_measure", "register_serve"]

# Seconds calls in flight get to finish on SIGTERM; `veil serve` exits within this plus
# ``veil.enclave.server.DRAIN_SECONDS`` and the time to close the audit logs.
SHUTDOWN_GRACE_SECONDS = 5.0


def register_serve(sub: Any) -> None:
    parser = sub.add_parser("serve", help="run an enclave service")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7443, help="0 picks a free port")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument(
        "--tee",
        choices=["auto", "sev-snp", "tdx", "simulated"],
        default="auto",
        help="evidence source (auto: SEV-SNP/TDX hardware when present, else simulated)",
    )
    parser.add_argument(
        "--sealing-key-file",
        type=Path,
        help="32-byte key (mode 0600) for data at rest on hardware without key derivation "
        "(TDX; SEV-SNP without /dev/sev-guest)",
    )
    parser.add_argument(
        "--tdx-collateral",
        type=Path,
        help="TDX: a folder of Intel PCS collateral to forward with each quote",
    )
    parser.add_argument("--log-level", default="INFO")
    parser.set_defaults(func=_serve)


def register_measure(sub: Any) -> None:
    parser = sub.add_parser("measure", help="print the expected measurement (hex)")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.set_defaults(func=_measure)


def _serve(args: argparse.Namespace) -> int:
    from veil.enclave._config import ensure_config
    from veil.enclave._enclave import Enclave
    from veil.enclave._files import write_atomic
    from veil.enclave._lock import DataDirLock
    from veil.enclave.server import create_server
    from veil.enclave.tee._select import select_provider
    from veil.enclave.tee._simulated import SimulatedSnp

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    data_dir: Path = args.data_dir
    lock = DataDirLock.acquire(data_dir)  # held until this process ends: one enclave per dir
    config, created_key = ensure_config(data_dir)
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
    enclave = Enclave(config, tee, tdx_collateral=collateral)
    running = create_server(enclave, host=args.host, port=args.port)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda *_: enclave.rotate_keys())
    print(f"veil enclave serving on {args.host}:{running.port}", flush=True)
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
    return 0


def _measure(args: argparse.Namespace) -> int:
    from veil.enclave._config import ServerConfig
    from veil.enclave._measurement import measure

    print(measure(ServerConfig.load(args.data_dir)).hex())
    return 0
