"""The owner's mark embedded during DP training inside the running enclave.

The same job (fast seeded noise, so both runs draw the same batches and noise) is trained with
and without ``watermark=``: the certified records must agree on every accounting field, only
the marked model must verify against the returned claim, and a bad key must be refused before
any budget is charged.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from enclave_support import TENANT_KEYS, Served
from sklearn.datasets import load_digits

from veil.sdk import InsecureModeWarning, RemoteError
from veil.sdk._training import TrainingOutcome
from veil.watermark import WatermarkClaim, WatermarkKey, verify

warnings.filterwarnings("ignore", message="trusting a test root")
ROWS = 600
# everything in a training record that is not about the model file or the moment of issue
DIFFERS = {"model_sha256", "model_ref", "issued_at", "watermark_claim_sha256"}


def _key_file(seed: int) -> dict[str, object]:
    return {
        "version": "veil-wm-key-v1",
        "owner_private_key": (bytes([seed]) * 32).hex(),
        "watermark": WatermarkKey(bytes([seed + 1]) * 32, bytes([seed + 2]) * 32).to_dict(),
    }


@pytest.fixture(scope="module")
def digits_npz() -> bytes:
    digits = load_digits()
    buf = io.BytesIO()
    np.savez(buf, x=(digits.data[:ROWS] / 16.0).astype(np.float32),
             y=digits.target[:ROWS].astype(np.int64))  # fmt: skip
    return buf.getvalue()


def _train(served: Served, data: bytes, name: str, **kw: object) -> TrainingOutcome:
    with served.client() as client, warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureModeWarning)
        dataset = client.upload_dataset(data, format="npz")
        job = client.train(dataset, "mlp", target_epsilon=4.0, delta=1e-6, epochs=3, batch_size=50,
                           name=name, noise="fast", seed=5, spec={"hidden": [64]},
                           **kw)  # type: ignore[arg-type]  # fmt: skip
        outcome = list(job.stream())[-1]
    assert isinstance(outcome, TrainingOutcome)
    return outcome


def test_mark_embedded_in_the_enclave_with_identical_accounting(
    served: Served, digits_npz: bytes
) -> None:
    marked = _train(served, digits_npz, "marked", watermark=_key_file(40))
    plain = _train(served, digits_npz, "plain")
    assert marked.record["epsilon"] == plain.record["epsilon"]
    same = {k: v for k, v in marked.record.items() if k not in DIFFERS}
    assert same == {k: v for k, v in plain.record.items() if k not in DIFFERS}
    assert marked.record["model_sha256"] != plain.record["model_sha256"]

    assert marked.watermark is not None and plain.watermark is None
    claim = WatermarkClaim.from_json(marked.watermark.claim_json)
    assert marked.record["watermark_claim_sha256"] == claim.digest()  # certified with the model
    assert claim.owner_public_key.hex() != ""
    key = WatermarkKey.from_dict(_key_file(40)["watermark"])
    with served.client() as client:
        check = client.verify_watermark(marked.model.ref, marked.watermark.claim_json,
                                        _key_file(40))  # fmt: skip
        unmarked = client.verify_watermark(plain.model.ref, marked.watermark.claim_json,
                                           _key_file(40))  # fmt: skip
    assert check.detected and check.matches == marked.watermark.matches
    assert not unmarked.detected and unmarked.p_value > 1e-4
    # the model file the enclave registered verifies offline too
    stored = served.enclave.store.load(served.enclave.store.resolve("default", marked.model.ref))
    assert verify(stored, claim, key).detected


def test_bad_watermark_key_is_refused_before_any_budget_is_spent(
    served: Served, digits_npz: bytes
) -> None:
    with served.client() as client:
        dataset = client.upload_dataset(digits_npz, format="npz")
        before = client.budget(dataset)
        bad = _key_file(50)
        bad["owner_private_key"] = "00" * 16  # 16 bytes, not a 32-byte seed
        with pytest.raises(RemoteError, match="32-byte"):
            job = client.train(dataset, "mlp", target_epsilon=1.0, epochs=1, noise="fast",
                               seed=1, watermark=bad)  # fmt: skip
            list(job.stream())
        after = client.budget(dataset)
    assert after.epsilon_spent == before.epsilon_spent


def test_veil_train_watermark_writes_the_claim_and_keeps_the_record_verifiable(
    served: Served, digits_npz: bytes, tmp_path: Path
) -> None:
    """`veil train --watermark KEY.json --claim-out FILE`: the mark goes in while training, the
    signed claim is written, and the --json record still verifies offline (claim not mixed in)."""
    (tmp_path / "d.npz").write_bytes(digits_npz)
    (tmp_path / "root.pem").write_bytes(served.root_pem)
    (tmp_path / "api").write_text(TENANT_KEYS["default"] + "\n")
    (tmp_path / "KEY.json").write_text(json.dumps(_key_file(50)))
    common = ["--target", served.address, "--trust-root", str(tmp_path / "root.pem")]
    veil = [sys.executable, "-m", "veil.sdk.cli"]
    run = subprocess.run(
        [*veil, "train", *common, "--api-key-file", str(tmp_path / "api"),
         "--dataset", str(tmp_path / "d.npz"), "--arch", "mlp", "--epsilon", "4",
         "--epochs", "3", "--model", "cli-marked", "--watermark", str(tmp_path / "KEY.json"),
         "--claim-out", str(tmp_path / "claim.json"), "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    claim = WatermarkClaim.from_json((tmp_path / "claim.json").read_text())
    record = json.loads(run.stdout)
    assert record["watermark_claim_sha256"] == claim.digest()
    (tmp_path / "record.json").write_text(run.stdout)
    verified = subprocess.run(
        [*veil, "train", "verify", str(tmp_path / "record.json"), *common[2:]],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    with served.client() as client:
        check = client.verify_watermark(record["model_ref"], claim.to_json(), _key_file(50))
    assert check.detected


def test_veil_train_claim_out_without_watermark_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_bytes(b"x")
    run = subprocess.run(
        [sys.executable, "-m", "veil.sdk.cli", "train", "--target", "127.0.0.1:1",
         "--dataset", str(tmp_path / "d.npz"), "--epsilon", "1", "--claim-out", "c.json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].endswith("need --watermark KEY.json")
