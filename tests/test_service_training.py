"""DP training through the running service: sealed datasets, budget, stream, certificate."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from enclave_support import TENANT_KEYS, Served
from sklearn.datasets import load_digits

from veil.sdk import AuditLogError, PrivacyBudgetExceeded, RemoteError, RemoteReason
from veil.sdk._training import TrainingOutcome, TrainingProgress, verify_training_record
from veil.sdk.audit import AuditRecord, EventType

warnings.filterwarnings("ignore", message="trusting a test root")
ROWS = 320

# The training record keys issue 5 requires (written out here, not taken from the SDK, so the
# test checks the SDK against the issue).
ISSUE_RECORD_KEYS = (
    "model",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "delta",
    "epsilon",
    "accountant",
    "max_grad_norm",
    "dataset_sha256",
)


@pytest.fixture(scope="module")
def digits_npz() -> bytes:
    digits = load_digits()
    x = (digits.data[:ROWS] / 16.0).astype(np.float32)
    y = digits.target[:ROWS].astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def _train(
    served: Served, data: bytes, **kw: object
) -> tuple[list[TrainingProgress], TrainingOutcome]:
    with served.client() as client:
        dataset = client.upload_dataset(data, format="npz")
        kw.setdefault("target_epsilon", 2.0)
        job = client.train(dataset, "logreg", epochs=1, batch_size=64, name="digits", seed=1, **kw)  # type: ignore[arg-type]
        events = list(job.stream())
    progress = [e for e in events if isinstance(e, TrainingProgress)]
    outcome = events[-1]
    assert isinstance(outcome, TrainingOutcome)
    return progress, outcome


def test_train_streams_progress_registers_model_and_certifies(
    served: Served, digits_npz: bytes
) -> None:
    progress, outcome = _train(served, digits_npz)
    assert progress, "no progress was streamed"
    assert [p.step for p in progress] == sorted(p.step for p in progress)
    assert progress[-1].step == progress[-1].total_steps == 5  # ceil(320 / 64) steps, 1 epoch
    assert all(0 < p.epsilon <= 2.0 + 1e-9 for p in progress)
    record = outcome.record
    for key in ISSUE_RECORD_KEYS:
        assert key in record
    assert record["accountant"] == "prv"
    assert record["epsilon"] <= 2.0 + 1e-9
    assert record["model_sha256"] == outcome.model.sha256
    assert record["code_measurement"] == served.enclave.measurement.hex()
    # the dataset's feature range and the device are certified too (issue 14)
    assert (record["feature_min"], record["feature_max"]) == (-1e9, 1e9)
    assert record["device"] in ("cpu", "cuda")
    with served.client() as client:
        out = client.infer(outcome.model.ref, {"input": np.zeros((2, 64), np.float32)})
        assert out["logits"].shape == (2, 10)
        budget = client.budget(record["dataset_sha256"])
    assert budget.epsilon_budget == 10.0
    assert budget.epsilon_spent == pytest.approx(record["epsilon"])
    events = [
        AuditRecord.from_line(line).event
        for line in (served.data_dir / "audit/default/entries.jsonl").read_bytes().splitlines()
    ]
    assert events[:5] == [
        EventType.DATASET_UPLOADED,
        EventType.TRAINING_STARTED,
        EventType.TRAINING_CHARGED,
        EventType.TRAINING_FINISHED,
        EventType.TRAINING_FINISHED,  # the sealed call's own record, with its receipt
    ]


def test_training_record_verifies_offline_and_tampering_is_caught(
    served: Served, digits_npz: bytes
) -> None:
    _, outcome = _train(served, digits_npz)
    doc = json.loads(json.dumps(outcome.to_json()))
    verified = verify_training_record(doc, served.policy(), now=datetime.now(UTC))
    assert verified.epsilon == outcome.record["epsilon"]
    assert verified.insecure_root
    doc["epsilon"] = doc["epsilon"] / 10
    with pytest.raises(AuditLogError, match=r"differs from its certificate in \['epsilon'\]"):
        verify_training_record(doc, served.policy(), now=datetime.now(UTC))


def test_job_over_budget_is_refused_before_training(served: Served, digits_npz: bytes) -> None:
    _train(served, digits_npz, target_epsilon=8.0)
    with served.client() as client:
        dataset = client.upload_dataset(digits_npz, format="npz")
        before = client.budget(dataset)
        with pytest.raises(PrivacyBudgetExceeded) as err:
            client.train(dataset, "logreg", target_epsilon=5.0, epochs=1, name="second").result()
        after = client.budget(dataset)
        assert [m.ref for m in client.list_models()] == ["digits@1"]
    cause = err.value.__cause__
    assert isinstance(cause, RemoteError) and cause.code == "RESOURCE_EXHAUSTED"
    assert cause.reason is RemoteReason.BUDGET_EXHAUSTED
    assert "left" in str(err.value)
    assert err.value.remaining_epsilon == pytest.approx(before.epsilon_remaining)
    assert err.value.remaining_delta == pytest.approx(before.delta_remaining)
    assert after == before


def test_bad_datasets_and_other_tenants(served: Served, digits_npz: bytes) -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((10, 3), np.float32))  # no labels
    with served.client() as client:
        with pytest.raises(RemoteError) as err:
            client.upload_dataset(buf.getvalue(), format="npz")
        assert err.value.code == "INVALID_ARGUMENT"
        with pytest.raises(RemoteError) as err:
            client.upload_dataset(b"a,b\n1,2\n", format="xlsx")
        assert err.value.detail == "dataset format 'xlsx' is not one of npz, csv, parquet"
        dataset = client.upload_dataset(digits_npz, format="npz")
    with served.client("acme") as other:
        with pytest.raises(RemoteError) as err:
            other.budget(dataset.sha256)
        assert err.value.code == "NOT_FOUND"
        with pytest.raises(RemoteError) as err:
            other.train(dataset.sha256, "mlp", target_epsilon=1.0).result()
        assert err.value.code == "NOT_FOUND"
    served.assert_healthy()


def test_cli_train_verify_and_budget(served: Served, digits_npz: bytes, tmp_path: Path) -> None:
    data = tmp_path / "digits.npz"
    data.write_bytes(digits_npz)
    root = tmp_path / "root.pem"
    root.write_bytes(served.root_pem)
    key = tmp_path / "key"
    key.write_text(TENANT_KEYS["default"])
    spec = tmp_path / "spec.toml"
    spec.write_text("hidden = [16]\nbatch_size = 64\nseed = 3\n")
    common = ["--target", served.address, "--trust-root", str(root), "--api-key-file", str(key)]
    veil = [sys.executable, "-m", "veil.sdk.cli"]
    env = dict(os.environ)
    run = subprocess.run(
        [
            *veil,
            "train",
            *common,
            "--dataset",
            str(data),
            "--arch",
            "mlp",
            "--epsilon",
            "1.5",
            "--delta",
            "1e-5",
            "--epochs",
            "1",
            "--spec",
            str(spec),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    for key in ISSUE_RECORD_KEYS:
        assert key in doc
    assert doc["model"].startswith("mlp[64->16->10")
    record = tmp_path / "record.json"
    record.write_text(run.stdout)
    ok = subprocess.run(
        [*veil, "train", "verify", str(record), "--trust-root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    doc["steps"] += 1
    record.write_text(json.dumps(doc))
    bad = subprocess.run(
        [*veil, "train", "verify", str(record), "--trust-root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "differs from its certificate" in bad.stderr
    budget = subprocess.run(
        [*veil, "budget", *common, "--dataset", doc["dataset_sha256"], "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert budget.returncode == 0, budget.stderr
    assert json.loads(budget.stdout)["epsilon_remaining"] == pytest.approx(10.0 - doc["epsilon"])
