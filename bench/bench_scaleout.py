"""Scale-out benchmark: what a replica's shared state costs, and how long key release takes.

Prints, from one run on loopback (real PostgreSQL, simulated TEE, all in this process):
  * sealed inferences/s of one client against an enclave with local state, and against a
    replica whose replay guard and model registry are in PostgreSQL; the ratio;
  * key release (attest the coordinator, prove the replica, open the bundle): median and p90.

    .venv/bin/python bench/bench_scaleout.py [--seconds 5] [--releases 20]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from enclave_support import TENANT_KEYS, mlp_model, write_config  # noqa: E402
from postgres_support import start_postgres  # noqa: E402
from scaleout_support import policy_toml  # noqa: E402

from veil.enclave._config import ServerConfig  # noqa: E402
from veil.enclave._enclave import Enclave  # noqa: E402
from veil.enclave._measurement import measure  # noqa: E402
from veil.enclave.scaleout import (  # noqa: E402
    Coordinator,
    Replica,
    ReplicaSettings,
    serve_coordinator,
)
from veil.enclave.scaleout import replica_measurement as bind  # noqa: E402
from veil.enclave.server import create_server  # noqa: E402
from veil.enclave.tee._simulated import SimulatedSnp  # noqa: E402
from veil.sdk import AttestationPolicy, Client  # noqa: E402
from veil.sdk.attestation import parse_policy  # noqa: E402
from veil.sdk.replicas import Manifest, policy_for, sign_manifest  # noqa: E402

X = np.ones((1, 4), np.float32)


def _rate(address: str, root_pem: bytes, measurement: bytes, seconds: float) -> float:
    policy = AttestationPolicy.simulated_for_tests(root_pem, measurements=[measurement])
    with Client(address, api_key=TENANT_KEYS["default"], policy=policy) as client:
        client.upload_model(mlp_model(), "m")
        for _ in range(20):  # warm up: attestation, ORT session, connections
            client.infer("m", {"x": X})
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            client.infer("m", {"x": X})
            n += 1
        return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--releases", type=int, default=20)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    root = Path(tempfile.mkdtemp(prefix="veil-bench-scaleout-"))
    pg = start_postgres(Path(tempfile.mkdtemp(prefix="veil-bench-pg-")))
    try:
        tee = SimulatedSnp.load_or_create(root / "platform")
        owner = ed25519.Ed25519PrivateKey.generate()
        coord_measurement = b"\x33" * 48
        coord_policy = policy_toml(tee.root_pem, [coord_measurement]).encode()
        local_dir, replica_dir = root / "local", root / "replica"
        write_config(local_dir)
        write_config(replica_dir)
        settings = ReplicaSettings(
            coordinator="",
            coordinator_policy=policy_for(parse_policy(coord_policy)),
            coordinator_policy_sha256=hashlib.sha256(coord_policy).digest(),
            database_url=pg.fresh_database(),
            replica_id="bench",
        )
        base = measure(ServerConfig.load(replica_dir))
        replica_measurement = bind(base, settings.coordinator_policy_sha256)
        manifest = Manifest.build(
            deployment="bench",
            policy_toml=policy_toml(tee.root_pem, [replica_measurement]),
            epoch_seconds=3600,
        )
        coordinator = Coordinator(
            manifest=manifest,
            manifest_signature=sign_manifest(manifest, owner),
            owner_key=owner.public_key(),
            tee=tee,
            measurement=coord_measurement,
            data_dir=root / "coordinator",
        )
        (root / "coordinator").mkdir(exist_ok=True)
        served = serve_coordinator(coordinator)
        settings = replace(settings, coordinator=served.address)

        local = create_server(Enclave(ServerConfig.load(local_dir), tee))
        local_rate = _rate(local.address, tee.root_pem, local.enclave.measurement, args.seconds)
        local.stop()
        replica = create_server(
            Enclave(ServerConfig.load(replica_dir), tee, replica=Replica(settings))
        )
        replica_rate = _rate(
            replica.address, tee.root_pem, replica.enclave.measurement, args.seconds
        )
        replica.stop()
        print(f"sealed inferences/s, one client, local state:      {local_rate:8.1f}")
        print(f"sealed inferences/s, one client, PostgreSQL state: {replica_rate:8.1f}")
        print(f"ratio replica / local: {replica_rate / local_rate:.2f}")

        times = []
        joiner = Replica(settings)
        for _ in range(args.releases):
            start = time.perf_counter()
            joiner.join(tee, measurement=replica_measurement, log_key=b"\x01" * 32, log_origin="b")
            times.append(time.perf_counter() - start)
        joiner.close()
        times.sort()
        print(
            f"key release ({args.releases}x): median {statistics.median(times) * 1000:.1f} ms, "
            f"p90 {times[int(0.9 * (len(times) - 1))] * 1000:.1f} ms"
        )
        served.stop()
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
