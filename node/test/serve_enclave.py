"""Start a real Veil enclave (simulated TEE) on 127.0.0.1:0 for the Node tests.

The same server as `veil serve` (``veil.enclave.server.create_server`` over an ``Enclave``),
started the way the Python tests start it (``tests/enclave_support.py``), with its call
recorder. Prints one JSON line — address, trust root, tenants' API keys, data dir, measurement,
and the paths of a small ONNX model (`model`) and a CSV dataset (`dataset`) it wrote for the
tests; then obeys commands on stdin, one per line, each answered with one JSON line:

    calls    the gRPC methods the server was asked to run so far
    sealed   every sealed request the gateway was asked to open, in order, as it arrived:
             {"method", "session": hex session_id ("" for one-shot HPKE), "seq"}
    sessions how many sealing sessions (protocol 1.4) the enclave holds
    rotate   start a new key epoch (clients sealed to the old one get `key-rotated`)
    quit     stop (so does the end of stdin)

``--max-sessions N`` sets ``[limits] max_sessions`` (the enclave drops the least recently used
session beyond N).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from enclave_support import TENANT_KEYS, Served, mlp_model, start, write_config  # noqa: E402


def digits_csv(rows: int = 320) -> bytes:
    """A small real dataset (scikit-learn's digits) as CSV, the label in the last column."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    header = ",".join([f"p{i}" for i in range(64)] + ["label"])
    lines = [header]
    for x, y in zip(digits.data[:rows], digits.target[:rows], strict=True):
        lines.append(",".join(f"{v / 16.0:.4f}" for v in x) + f",{int(y)}")
    return ("\n".join(lines) + "\n").encode()


def record_sealed(served: Served) -> list[dict[str, object]]:
    """Wrap the real gateway's ``open`` to note each sealed request's clear envelope."""
    seen: list[dict[str, object]] = []
    gateway = served.enclave.gateway
    opener = gateway.open

    def recording(request, method):  # type: ignore[no-untyped-def]
        seen.append({"method": method, "session": request.session_id.hex(), "seq": request.seq})
        return opener(request, method)

    gateway.open = recording  # type: ignore[method-assign]
    return seen


def main() -> int:
    warnings.simplefilter("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-sessions", type=int)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="veil-node-e2e-") as tmp:
        data = Path(tmp) / "data"
        write_config(data)
        if args.max_sessions is not None:
            with (data / "config.toml").open("a") as config:
                config.write(f"\n[limits]\nmax_sessions = {args.max_sessions}\n")
        served = start(data)
        sealed = record_sealed(served)
        root = Path(tmp) / "simulated-root.pem"
        root.write_bytes(served.root_pem)
        model = Path(tmp) / "mlp.onnx"
        model.write_bytes(mlp_model())
        dataset = Path(tmp) / "digits.csv"
        dataset.write_bytes(digits_csv())
        print(
            json.dumps(
                {
                    "address": served.address,
                    "root_pem": str(root),
                    "api_keys": TENANT_KEYS,
                    "data_dir": str(data),
                    "measurement": served.enclave.measurement.hex(),
                    "model": str(model),
                    "dataset": str(dataset),
                    "python": sys.executable,
                }
            ),
            flush=True,
        )
        try:
            for line in sys.stdin:
                command = line.strip()
                if command == "calls":
                    print(json.dumps(served.calls.methods), flush=True)
                elif command == "sealed":
                    print(json.dumps(sealed), flush=True)
                elif command == "sessions":
                    print(json.dumps(len(served.enclave.gateway.sessions)), flush=True)
                elif command == "rotate":
                    served.enclave.rotate_keys()
                    print(json.dumps("rotated"), flush=True)
                elif command == "quit":
                    break
                else:
                    print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
        finally:
            served.running.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
