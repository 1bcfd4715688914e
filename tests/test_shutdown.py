"""Stopping and starting: ``veil serve`` exits on SIGTERM within its grace period whatever is
running, its audit logs reopen cleanly, and what a crash left in temporary files is removed.

Regression: a ``Loop`` whose trip count came from an input (2^62) ran on after its client gave
up; SIGTERM printed "stopped" but the process never exited.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from enclave_support import TENANT_KEYS, write_config
from onnx import TensorProto, helper
from sklearn.datasets import load_digits

from veil.enclave._config import SYSTEM_LOG, ServerConfig
from veil.enclave._enclave import Enclave
from veil.enclave.server import DRAIN_SECONDS
from veil.enclave.tee._simulated import SimulatedSnp
from veil.sdk import AttestationPolicy, Client

warnings.filterwarnings("ignore", message="trusting a test root")

GRACE_SECONDS = 5.0  # what `veil serve` gives calls in flight (veil.enclave.cli)
MARGIN_SECONDS = 10.0  # closing the logs, interpreter exit, a loaded test machine


def spin_model() -> bytes:
    """``Loop`` ``n`` times adding 1: with ``n`` = 2^62 it runs for as long as anyone lets it."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "one"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["n", "go", "v"], ["out"], body=body)],
        "spin",
        [
            helper.make_tensor_value_info("n", TensorProto.INT64, []),
            helper.make_tensor_value_info("v", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1])],
        [helper.make_tensor("go", TensorProto.BOOL, [], [True])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


class Serve:
    """``veil serve`` as a user runs it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "veil.sdk.cli",
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
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
            raise AssertionError(f"server did not start: {self.lines}")
        # Keep reading (a full pipe would block the server); the text is checked at the end.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        self._reader.join(timeout=10)
        return "".join(self.lines)

    def client(self) -> Client:
        root = (self.data_dir / "simulated-root.pem").read_bytes()
        return Client(
            self.address,
            tenant="default",
            api_key=TENANT_KEYS["default"],
            policy=AttestationPolicy.simulated_for_tests(root),
        )

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def busy_data_dir(tmp_path: Path, tee_template: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(tee_template, data / "simulated-tee")
    write_config(data)
    with (data / "config.toml").open("a") as fh:  # nothing ends by itself during the test
        fh.write("\n[limits]\ninference_timeout_seconds = 3600\nstream_idle_seconds = 3600\n")
    return data


@pytest.fixture
def serve(busy_data_dir: Path) -> Iterator[Serve]:
    s = Serve(busy_data_dir)
    try:
        yield s
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def test_sigterm_exits_within_grace_while_an_inference_spins_and_streams_idle(
    serve: Serve,
) -> None:
    with serve.client() as client:
        client.upload_model(spin_model(), "spin")

    outcome: list[BaseException] = []

    def spin() -> None:  # ends with an error when the server goes away
        with serve.client() as client:
            try:
                client.infer("spin", {"n": np.array(2**62, dtype=np.int64), "v": np.zeros(1, "f")})
            except Exception as exc:
                outcome.append(exc)

    spinning = threading.Thread(target=spin, daemon=True)
    release = threading.Event()

    def nothing() -> Iterator[bytes]:
        release.wait(timeout=60)
        yield from ()

    channel = grpc.insecure_channel(serve.address)
    try:
        idle = [
            channel.stream_unary("/veil.v1.ModelService/UploadModel").future(nothing(), timeout=60)
            for _ in range(4)
        ]
        before = serve.cpu_seconds()
        spinning.start()
        deadline = time.monotonic() + 30  # the inference is running once the server burns CPU
        while serve.cpu_seconds() - before < 1.0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert serve.cpu_seconds() - before >= 1.0
        assert not any(call.done() for call in idle)

        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=GRACE_SECONDS + DRAIN_SECONDS + MARGIN_SECONDS) == 0
        for call in idle:
            assert call.exception(timeout=10) is not None
    finally:
        release.set()
        channel.close()
    spinning.join(timeout=30)
    assert len(outcome) == 1  # the inference never answered a result
    assert "veil enclave stopped" in serve.output()

    # The stop was recorded and every log reopens cleanly.
    system_log = serve.data_dir / "audit" / SYSTEM_LOG / "entries.jsonl"
    assert b'"service_stop"' in system_log.read_bytes().splitlines()[-1]
    enclave = Enclave(
        ServerConfig.load(serve.data_dir), SimulatedSnp.load_or_create(serve.data_dir)
    )
    try:
        assert enclave.audit.size("default") >= 1
    finally:
        enclave.close()


def test_sigterm_exits_within_grace_while_a_training_job_runs(serve: Serve) -> None:
    digits = load_digits()
    buf = io.BytesIO()
    np.savez(buf, x=(digits.data[:320] / 16.0).astype(np.float32), y=digits.target[:320])
    progressed = threading.Event()
    outcome: list[object] = []

    def train() -> None:  # far more steps than the test waits for
        with serve.client() as client:
            dataset = client.upload_dataset(buf.getvalue(), format="npz")
            job = client.train(
                dataset, "logreg", target_epsilon=8.0, epochs=2000, accountant="rdp", seed=1
            )
            try:
                for event in job.stream():
                    progressed.set()
                    outcome.append(event)
            except Exception as exc:
                outcome.append(exc)

    training = threading.Thread(target=train, daemon=True)
    training.start()
    assert progressed.wait(timeout=120)
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(timeout=GRACE_SECONDS + DRAIN_SECONDS + MARGIN_SECONDS) == 0
    training.join(timeout=30)
    assert isinstance(outcome[-1], Exception)  # the job did not finish: it was stopped
    system_log = serve.data_dir / "audit" / SYSTEM_LOG / "entries.jsonl"
    assert b'"service_stop"' in system_log.read_bytes().splitlines()[-1]


def test_stale_temporary_files_are_removed_at_startup(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stale = [
        data_dir / "tmp" / "upload-3kf9.spool",
        data_dir / "models" / "default" / "secret-model" / ".v1.onnx.enc.x7a2.tmp",
        data_dir / "datasets" / "default" / f".{'ab' * 32}.enc.q1w2.tmp",
        data_dir / "audit" / "default" / ".checkpoint.k3j4.tmp",  # killed mid-checkpoint
    ]
    kept = data_dir / "models" / "default" / "secret-model" / "notes.txt"
    for path in [*stale, kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 1024)
    caplog.set_level(logging.INFO)
    enclave = Enclave(ServerConfig.load(data_dir), SimulatedSnp.load_or_create(data_dir))
    enclave.close()
    assert not [p for p in stale if p.exists()]
    assert kept.exists()
    assert "removed 4 temporary file(s)" in caplog.text
    assert "secret-model" not in caplog.text and ".tmp" not in caplog.text
