"""The ``veil`` command line, run as a user runs it: real processes, real files, exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from enclave_support import mlp_model

VEIL = [sys.executable, "-m", "veil.sdk.cli"]
SNP = "sev-snp"


def veil(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VEIL, *args], capture_output=True, text=True, timeout=timeout, env=env)


def errors(stderr: str) -> list[str]:
    """stderr without the warnings: the error, one line."""
    return [line for line in stderr.splitlines() if not line.startswith("veil: warning: ")]


class Server:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [*VEIL, "serve", "--data-dir", str(data_dir), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if match := re.search(r"serving on (\S+)", line):
                self.address = match.group(1)
                break
        else:
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"server did not start: {self.lines} {stderr}")

    def client_args(self) -> list[str]:
        return [
            "--target",
            self.address,
            "--trust-root",
            str(self.data_dir / "simulated-root.pem"),
            "--api-key-file",
            str(self.data_dir / "default.key"),
        ]


@pytest.fixture
def server(tmp_path: Path, tee_template: Path) -> Iterator[Server]:
    data = tmp_path / "data"
    shutil.copytree(tee_template, data / "simulated-tee")
    s = Server(data)
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def test_serve_creates_tenant_root_and_stops_cleanly_on_sigterm(server: Server) -> None:
    key = server.data_dir / "default.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text().strip().startswith("veil_")
    assert (
        (server.data_dir / "simulated-root.pem")
        .read_bytes()
        .startswith(b"-----BEGIN CERTIFICATE-----")
    )
    assert any("created tenant 'default'" in line for line in server.lines)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0


def test_measure_matches_what_attest_verifies(server: Server) -> None:
    measured = veil("measure", "--data-dir", str(server.data_dir))
    assert measured.returncode == 0, measured.stderr
    expected = measured.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{96}", expected)
    result = veil("attest", *server.client_args(), "--expect-measurement", expected, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verified"] is True and doc["tee"] == SNP
    assert doc["measurement"] == expected
    assert doc["insecure_root"] is True
    assert "InsecureModeWarning" in result.stderr or "test root" in result.stderr


def test_attest_fails_closed_with_exit_1(server: Server) -> None:
    wrong = veil("attest", *server.client_args(), "--expect-measurement", "00" * 48, "--json")
    assert wrong.returncode == 1
    assert "measurement_mismatch" in wrong.stderr
    assert json.loads(wrong.stdout)["error"]["reason"] == "measurement_mismatch"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    no_root = veil("attest", "--target", server.address, env=env)
    assert no_root.returncode == 1
    assert "untrusted_root" in no_root.stderr
    assert "accepting any enclave code" in no_root.stderr  # said once, as a warning


def test_models_upload_and_infer_commands(server: Server, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(mlp_model())
    up = veil("models", "upload", *server.client_args(), "--model", "scorer", str(model), "--json")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["model"] == "scorer@1"
    again = veil("models", "upload", *server.client_args(), "--name", "scorer", str(model))
    assert again.returncode == 0, again.stderr  # the old spelling still works, and says so
    assert again.stdout.startswith("uploaded scorer@2 ") and "--name is deprecated" in again.stderr
    x = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out_dir = tmp_path / "out"
    inf = veil(
        "infer",
        *server.client_args(),
        "--model",
        "scorer@1",
        "--input",
        f"x={tmp_path / 'x.npy'}",
        "--out",
        str(out_dir),
        "--json",
    )
    assert inf.returncode == 0, inf.stderr
    expected = ort.InferenceSession(model.read_bytes(), providers=["CPUExecutionProvider"]).run(
        ["probs"], {"x": x}
    )[0]
    assert np.load(out_dir / "probs.npy").tobytes() == expected.tobytes()
    outputs = {o["name"]: o for o in json.loads(inf.stdout)["outputs"]}
    assert outputs["probs"]["shape"] == [3, 3] and outputs["probs"]["file"].endswith("probs.npy")
    listed = veil("models", "list", *server.client_args())
    assert listed.stdout.startswith("scorer@1\t")
    as_json = json.loads(veil("models", "list", *server.client_args(), "--json").stdout)
    assert [m["model"] for m in as_json["models"]] == ["scorer@1", "scorer@2"]
    deleted = veil("models", "delete", *server.client_args(), "--model", "scorer@2", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert [m["model"] for m in json.loads(deleted.stdout)["deleted"]] == ["scorer@2"]
    gone = veil("infer", *server.client_args(), "--model", "scorer@2", "--input",
                f"x={tmp_path / 'x.npy'}", "--out", str(out_dir), "--json")  # fmt: skip
    assert gone.returncode == 1
    error = json.loads(gone.stdout)["error"]
    assert error["reason"] == "not-found" and error["kind"] == "RemoteError"
    assert errors(gone.stderr) == ["veil infer: error: NOT_FOUND: model scorer@2 not found"]


def test_environment_defaults_target_trust_root_and_key_file(server: Server) -> None:
    host, _, port = server.address.rpartition(":")
    env = dict(
        os.environ,
        VEIL_TARGET=server.address,
        VEIL_TRUST_ROOT=str(server.data_dir / "simulated-root.pem"),
        VEIL_API_KEY_FILE=str(server.data_dir / "default.key"),  # ends in a newline: stripped
    )
    env.pop("VEIL_API_KEY", None)
    listed = veil("models", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"models": []}
    # A flag beats its environment default; a bad environment value is named as such.
    wrong = veil("models", "list", "--target", f"{host}:{port}", env={**env, "VEIL_TARGET": "a:b"})
    assert wrong.returncode == 0, wrong.stderr
    bad = veil("models", "list", env={**env, "VEIL_TARGET": "host:notaport"})
    assert bad.returncode == 2 and "$VEIL_TARGET 'host:notaport' is not HOST[:PORT]" in bad.stderr


def test_api_key_from_environment_and_missing_key(server: Server) -> None:
    args = server.client_args()[:4]  # target and trust root, no key file
    env = dict(os.environ, VEIL_API_KEY=(server.data_dir / "default.key").read_text().strip())
    env.pop("VEIL_API_KEY_FILE", None)
    assert veil("models", "list", *args, env=env).returncode == 0
    env.pop("VEIL_API_KEY")
    missing = veil("models", "list", *args, env=env)
    assert missing.returncode == 2  # usage: nothing was sent
    assert "no API key: pass --api-key-file FILE or set VEIL_API_KEY_FILE" in missing.stderr
    bad = dict(env, VEIL_API_KEY="wrong")
    refused = veil("models", "list", *args, "--json", env=bad)
    assert refused.returncode == 1
    assert "UNAUTHENTICATED: invalid API key or unknown tenant" in refused.stderr
    assert json.loads(refused.stdout)["error"]["reason"] == "unauthenticated"


def test_attest_verify_offline_on_real_reports(vectors: Path) -> None:
    base = vectors / "sev-snp"
    ok = veil(
        "attest",
        "verify",
        str(base / "routex-lua/report-turin.bin"),
        "--certs",
        str(base / "routex-lua/vcek-chain-turin.pem"),
        "--at",
        "2026-01-15T00:00:00Z",
        "--json",
    )
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["product"] == "Turin" and doc["verified"] is True
    separate = veil(
        "attest",
        "verify",
        str(base / "virtee-sev/report_milan.bin"),
        "--certs",
        str(base / "virtee-sev/cert_chain_milan.pem"),
        "--vcek",
        str(base / "virtee-sev/vcek_milan.der"),
        "--at",
        "2026-01-15T00:00:00Z",
    )
    assert separate.returncode == 0, separate.stderr
    debug = veil(
        "attest",
        "verify",
        str(base / "go-sev-guest/attestation.bin"),
        "--certs",
        str(base / "go-sev-guest/ask_ark_milan.pem"),
        "--vcek",
        str(base / "go-sev-guest/vcek_milan.der"),
        "--at",
        "2026-01-15T00:00:00Z",
    )
    assert debug.returncode == 1
    assert "debug_enclave" in debug.stderr
    allowed = veil(
        "attest",
        "verify",
        str(base / "go-sev-guest/attestation.bin"),
        "--certs",
        str(base / "go-sev-guest/ask_ark_milan.pem"),
        "--vcek",
        str(base / "go-sev-guest/vcek_milan.der"),
        "--at",
        "2026-01-15T00:00:00Z",
        "--allow-debug",
    )
    assert allowed.returncode == 0
    late = veil(
        "attest",
        "verify",
        str(base / "virtee-sev/report_milan.bin"),
        "--certs",
        str(base / "virtee-sev/cert_chain_milan.pem"),
        "--vcek",
        str(base / "virtee-sev/vcek_milan.der"),
        "--at",
        "2099-01-01T00:00:00Z",
    )
    assert late.returncode == 1 and "cert_expired" in late.stderr


def test_usage_errors_exit_2() -> None:
    for args in (["attest", "verify"], ["infer", "--model", "m"], ["attest"], ["no-such-command"]):
        out = veil(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr
