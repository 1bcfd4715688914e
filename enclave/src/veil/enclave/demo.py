"""`make demo`: start a local enclave (simulated TEE), verify it, upload a model, infer, sealed.

Everything is made locally: the demo model is a logistic-regression credit scorer fitted with
numpy on synthetic applicants, exported to ONNX with ``onnx.helper``. No downloads.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from veil.sdk import AttestationPolicy, Client, InsecureModeWarning, VerifiedSnpReport

FEATURES = ["income", "debt_ratio", "late_payments", "years_employed"]


def demo_model(seed: int = 7) -> bytes:
    """Fit a logistic regression on synthetic applicants and export it as ONNX."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, len(FEATURES))).astype(np.float32)
    true_w = np.array([-1.2, 1.5, 2.0, -0.8], dtype=np.float32)
    y = (rng.random(2000) < 1 / (1 + np.exp(-(x @ true_w - 0.3)))).astype(np.float32)
    w, b = np.zeros(len(FEATURES), np.float32), np.float32(0.0)
    for _ in range(300):  # plain gradient descent on the log-loss
        p = 1 / (1 + np.exp(-(x @ w + b)))
        w -= 0.5 * (x.T @ (p - y)) / len(y)
        b -= np.float32(0.5 * float(np.mean(p - y)))
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "w"], ["z0"]),
            helper.make_node("Add", ["z0", "b"], ["z"]),
            helper.make_node("Sigmoid", ["z"], ["default_probability"]),
        ],
        "credit_scorer",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", len(FEATURES)])],
        [helper.make_tensor_value_info("default_probability", TensorProto.FLOAT, ["N", 1])],
        [
            numpy_helper.from_array(w.reshape(-1, 1).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([b], np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _start_server(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "veil.sdk.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        "0",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if match := re.search(r"serving on (\S+)", line):
            return proc, match.group(1)
    proc.kill()
    raise SystemExit("demo: the enclave did not start")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="veil-demo-") as tmp:
        data_dir = Path(tmp)
        print("1. starting a local enclave (simulated TEE) ...", flush=True)
        proc, address = _start_server(data_dir)
        try:
            expected = subprocess.run(
                [sys.executable, "-m", "veil.sdk.cli", "measure", "--data-dir", str(data_dir)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            print(f"   serving on {address}; expected measurement (veil measure): {expected[:32]}…")
            api_key = (data_dir / "default.key").read_text().strip()
            policy = AttestationPolicy.simulated_for_tests(
                data_dir / "simulated-root.pem", measurements=[expected]
            )
            with (
                warnings.catch_warnings(record=True) as caught,
                Client(address, api_key=api_key, policy=policy) as client,
            ):
                enclave = client.attest()
                print("2. attestation verified (SEV-SNP report format, simulated root):")
                print(f"   measurement  {enclave.measurement}")
                if isinstance(enclave.report, VerifiedSnpReport):
                    print(f"   TCB          {enclave.report.reported_tcb}")
                print(f"   sealing keys {', '.join(s.name for s in enclave.claims.keys)}")
                if any(issubclass(w.category, InsecureModeWarning) for w in caught):
                    print("   WARNING: trusted a TEST root: this proves no hardware isolation")
                model = demo_model()
                info = client.upload_model(model, "credit-scorer")
                print(f"3. uploaded {info.ref} (sha256 {info.sha256[:16]}…), encrypted end to end")
                applicants = np.array(
                    [[1.2, -0.5, -1.0, 1.5], [-0.8, 1.4, 1.8, -0.6]], dtype=np.float32
                )
                out = client.infer("credit-scorer", {"features": applicants})
                probs = out["default_probability"][:, 0]
                print("4. sealed inference result (probability of default):")
                for row, p in zip(applicants, probs, strict=True):
                    shown = ", ".join(
                        f"{name}={v:+.1f}" for name, v in zip(FEATURES, row, strict=True)
                    )
                    print(f"   applicant ({shown}) -> {p:.3f}")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        print(f"5. enclave shut down (exit code {code})")
        return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
