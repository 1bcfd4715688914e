"""``veil coordinator``, and the replica options of ``veil serve`` (``--state postgres``).

``veil coordinator`` serves the key-release service of a replicated deployment
(docs/SCALE-OUT.md). ``veil serve --state postgres --coordinator HOST:PORT
--coordinator-policy FILE`` (the database URL in ``$VEIL_DATABASE_URL``) starts a replica: it
attests the coordinator, proves itself, and serves only once its keys are released.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from veil.sdk.cli import Outcome, UsageError, add_command
from veil.sdk.errors import ConfigError, ConfigFailure

__all__ = [
    "DATABASE_URL_ENV",
    "add_replica_arguments",
    "load_owner_key",
    "measure_replica",
    "register_coordinator",
    "replica_from_args",
]

DATABASE_URL_ENV = "VEIL_DATABASE_URL"


def load_owner_key(data: bytes) -> Any:
    """The deployment owner's Ed25519 public key: PEM (SubjectPublicKeyInfo) or 32 raw bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if len(data) == 32:
        return ed25519.Ed25519PublicKey.from_public_bytes(data)
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError("owner key is neither PEM nor 32 raw bytes") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError("owner key is not an Ed25519 key")
    return key


def register_coordinator(sub: Any) -> None:
    parser = add_command(
        sub,
        "coordinator",
        _coordinator,
        help="run the key-release coordinator of a replicated deployment",
        description="Hold the deployment's signed manifest and release the shared sealing and "
        "model-store keys to replicas whose attestation evidence satisfies it. Prints `veil "
        "coordinator serving on HOST:PORT` once it serves.",
        json_output=False,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=7100, help="port; 0 picks a free one")
    parser.add_argument(
        "--data-dir",
        type=Path,
        required=True,
        metavar="D",
        help="the coordinator's folder: its TEE keys, the sealed model-store key",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        required=True,
        metavar="FILE",
        help="the deployment's manifest (canonical JSON, docs/SCALE-OUT.md)",
    )
    parser.add_argument(
        "--manifest-signature", type=Path, metavar="FILE", help="default: MANIFEST.sig"
    )
    parser.add_argument(
        "--owner-key", type=Path, required=True, metavar="FILE", help="the owner's Ed25519 key"
    )
    parser.add_argument(
        "--tee",
        choices=["auto", "sev-snp", "tdx", "simulated"],
        default="auto",
        help="evidence source (auto: SEV-SNP/TDX hardware when present, else simulated) ",
    )


def _coordinator(args: argparse.Namespace) -> Outcome:
    from veil.enclave._files import write_atomic
    from veil.enclave._lock import DataDirLock
    from veil.enclave._measurement import code_manifest
    from veil.enclave.scaleout._coordinator import Coordinator, coordinator_measurement
    from veil.enclave.scaleout._coordinator_service import serve_coordinator
    from veil.enclave.tee._select import select_provider
    from veil.enclave.tee._simulated import SimulatedSnp

    data_dir: Path = args.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock.acquire(data_dir)
    sig_path = args.manifest_signature or args.manifest.with_name(args.manifest.name + ".sig")
    for path in (args.manifest, sig_path, args.owner_key):
        if not path.is_file():
            raise UsageError(f"{path}: no such file", reason=ConfigFailure.MISSING_FILE)
    owner_raw = args.owner_key.read_bytes()
    owner = load_owner_key(owner_raw)
    selection = select_provider(args.tee, data_dir)
    tee = selection.provider
    if isinstance(tee, SimulatedSnp):
        write_atomic(data_dir / "simulated-root.pem", tee.root_pem, mode=0o644)
    from cryptography.hazmat.primitives import serialization

    owner_bytes = owner.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    measurement = coordinator_measurement(code_manifest(), owner_bytes)
    coordinator = Coordinator(
        manifest=args.manifest.read_bytes(),
        manifest_signature=sig_path.read_bytes(),
        owner_key=owner,
        tee=tee,
        measurement=measurement,
        data_dir=data_dir,
    )
    running = serve_coordinator(coordinator, host=args.host, port=args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"veil coordinator serving on {args.host}:{running.port}", flush=True)
    print(f"measurement {measurement.hex()}", flush=True)
    print(f"manifest {coordinator.manifest.sha256.hex()}", flush=True)
    while not stop.wait(0.5):
        pass
    running.stop()
    lock.release()
    print("veil coordinator stopped", file=sys.stderr, flush=True)
    return Outcome()


def measure_replica(base: bytes, coordinator_policy: Path) -> bytes:
    """``veil measure --coordinator-policy FILE``: what a replica started with FILE reports."""
    from veil.enclave.scaleout._replica import replica_measurement

    if not coordinator_policy.is_file():
        raise UsageError(f"{coordinator_policy}: no such file", reason=ConfigFailure.MISSING_FILE)
    return replica_measurement(base, hashlib.sha256(coordinator_policy.read_bytes()).digest())


def add_replica_arguments(parser: argparse.ArgumentParser) -> None:
    """``veil serve``'s options for running as a replica of a replicated deployment."""
    parser.add_argument(
        "--state",
        choices=["local", "postgres"],
        default="local",
        help="local: one enclave, state in its data folder; postgres: a replica, "
        f"its keys from --coordinator and its shared state in ${DATABASE_URL_ENV}",
    )
    parser.add_argument("--coordinator", metavar="HOST:PORT", help="the key-release coordinator")
    parser.add_argument(
        "--coordinator-policy",
        type=Path,
        metavar="FILE",
        help="policy file (TOML) the coordinator's evidence must satisfy",
    )
    parser.add_argument(
        "--replica-id",
        default="",
        help="this replica's name in its certificate and audit log (empty: random)",
    )


def replica_from_args(args: argparse.Namespace) -> Any:
    """A ``Replica`` for ``--state postgres`` (None for local state); refuse half a setup."""
    if getattr(args, "state", "local") != "postgres":
        if getattr(args, "coordinator", None):
            raise UsageError(
                "--coordinator needs --state postgres", reason=ConfigFailure.INVALID_VALUE
            )
        return None
    from veil.enclave.scaleout._replica import Replica, ReplicaSettings
    from veil.sdk.attestation import parse_policy
    from veil.sdk.replicas import policy_for

    url = os.environ.get(DATABASE_URL_ENV, "")
    if not url:
        raise UsageError(
            f"--state postgres needs ${DATABASE_URL_ENV}", reason=ConfigFailure.MISSING_VALUE
        )
    if not args.coordinator or args.coordinator_policy is None:
        raise UsageError(
            "--state postgres needs --coordinator and --coordinator-policy",
            reason=ConfigFailure.MISSING_VALUE,
        )
    if not args.coordinator_policy.is_file():
        raise UsageError(
            f"{args.coordinator_policy}: no such file", reason=ConfigFailure.MISSING_FILE
        )
    raw = args.coordinator_policy.read_bytes()
    policy = parse_policy(
        raw, source=args.coordinator_policy.name, base_dir=args.coordinator_policy.parent
    )
    return Replica(
        ReplicaSettings(
            coordinator=args.coordinator,
            coordinator_policy=policy_for(policy),
            coordinator_policy_sha256=hashlib.sha256(raw).digest(),
            database_url=url,
            replica_id=args.replica_id,
        )
    )
