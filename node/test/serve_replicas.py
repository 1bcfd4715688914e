"""Start a replicated Veil deployment on loopback for the Node tests (docs/SCALE-OUT.md).

PostgreSQL (``tests/postgres_support.py``), an attested coordinator and one replica
(``tests/scaleout_support.py``: real ``veil coordinator`` and ``veil serve --state postgres``
processes, simulated TEE). Prints one JSON line — the replica's address, the trust root, the
replica measurement, the coordinator's address and measurement, the owner's public key, the
tenants' API keys, the path of a small ONNX model — or
``{"skip": why}`` when PostgreSQL is not installed; then waits for ``quit`` (or the end of
stdin) and stops everything.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from enclave_support import TENANT_KEYS, mlp_model  # noqa: E402
from postgres_support import find_bindir, start_postgres  # noqa: E402


def _wait_for_quit() -> None:
    for line in sys.stdin:
        if line.strip() == "quit":
            break


def main() -> int:
    warnings.simplefilter("ignore")
    try:
        find_bindir()
    except RuntimeError as exc:
        print(json.dumps({"skip": f"PostgreSQL not installed ({exc})"}), flush=True)
        _wait_for_quit()
        return 0
    from scaleout_support import Deployment

    pg_root = Path(tempfile.mkdtemp(prefix="veil-pg-"))  # a top-level folder PostgreSQL can own
    server = start_postgres(pg_root)
    with tempfile.TemporaryDirectory(prefix="veil-node-replicas-") as tmp:
        root = Path(tmp)
        deployment: Deployment | None = None
        try:
            (root / "deployment").mkdir()
            deployment = Deployment(root / "deployment", server.fresh_database())
            coordinator = deployment.start_coordinator()
            replica = deployment.launch_replica("r1")
            address = replica.wait_serving()
            (root / "simulated-root.pem").write_bytes(deployment.root_pem)
            (root / "mlp.onnx").write_bytes(mlp_model())
            print(
                json.dumps(
                    {
                        "address": address,
                        "root_pem": str(root / "simulated-root.pem"),
                        "measurement": deployment.measurement.hex(),
                        "manifest_sha256": deployment.manifest_sha256.hex(),
                        "coordinator": coordinator,
                        "coordinator_measurement": deployment.coordinator_measurement.hex(),
                        "owner_public": (deployment.root / "owner.pub").read_bytes().hex(),
                        "api_keys": TENANT_KEYS,
                        "model": str(root / "mlp.onnx"),
                    }
                ),
                flush=True,
            )
            _wait_for_quit()
        finally:
            if deployment is not None:
                deployment.stop()
            server.stop()
            shutil.rmtree(pg_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
