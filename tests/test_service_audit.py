"""The audit log inside the running service: records, receipts, proofs, exports, CLI."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from enclave_support import TENANT_KEYS, Served, mlp_model, start

from veil.enclave.audit import Signer
from veil.sdk import AttestationPolicy, AuditLogError
from veil.sdk._audit_client import attestation_check
from veil.sdk._core import ClientCore
from veil.sdk.audit import AuditRecord, EventType, Outcome, verify_export
from veil.sdk.protocol import Method
from veil.sdk.sealing import seal_response
from veil.v1 import common_pb2, models_pb2

warnings.filterwarnings("ignore", message="trusting a test root")
X = np.random.default_rng(5).normal(size=(2, 4)).astype(np.float32)


def _records(served: Served, tenant: str) -> list[AuditRecord]:
    path = served.data_dir / "audit" / tenant / "entries.jsonl"
    return [AuditRecord.from_line(line) for line in path.read_bytes().splitlines()]


def test_every_sealed_call_carries_a_verified_receipt(served: Served) -> None:
    with served.client() as client:
        client.upload_model(mlp_model(), "m")
        client.infer("m", {"x": X})
        client.list_models()
        receipts = client.receipts
        assert [r.leaf_index for r in receipts] == [0, 1, 2]
        assert {r.tenant for r in receipts} == {"default"}
        assert receipts[1].model_digest == client.list_models()[0].sha256
        checkpoint = client.prove_receipt(receipts[1])
        assert checkpoint.size >= 4
        assert checkpoint.origin == "veil-enclave/default"
    events = [r.event for r in _records(served, "default")]
    assert events[:4] == [
        EventType.MODEL_REGISTERED,
        EventType.INFERENCE,
        EventType.MODEL_LISTED,
        EventType.MODEL_LISTED,
    ]


def test_records_hold_digests_never_plaintext_or_keys(served: Served) -> None:
    with served.client() as client:
        client.upload_model(mlp_model(), "m")
        client.infer("m", {"x": X})
    raw = b"".join(p.read_bytes() for p in (served.data_dir / "audit").rglob("*") if p.is_file())
    assert TENANT_KEYS["default"].encode() not in raw
    assert X.tobytes() not in raw and X.tobytes()[:16] not in raw
    inference = next(r for r in _records(served, "default") if r.event is EventType.INFERENCE)
    assert inference.resource == "m@1"
    assert inference.key_id == hashlib.sha256(TENANT_KEYS["default"].encode()).digest()[:8].hex()
    assert str(inference.details["inputs_hmac"]).startswith("hmac-sha256:")
    assert str(inference.details["response_hmac"]).startswith("hmac-sha256:")
    assert inference.origin.startswith("ipv4:127.0.0.1:") or inference.origin.startswith("ipv6:")


def test_failures_and_service_events_are_recorded(served: Served) -> None:
    with (
        served.client(api_key="wrong") as client,
        pytest.raises(Exception, match="UNAUTHENTICATED"),
    ):
        client.list_models()
    with served.client() as client, pytest.raises(Exception, match="NOT_FOUND"):
        client.infer("missing", {"x": X})
    served.enclave.tally.flush()  # refusals and attestations are aggregated per window
    default = _records(served, "default")
    assert [(r.event, r.outcome) for r in default] == [
        (EventType.INFERENCE, Outcome.FAILURE),
        (EventType.AUTH_FAILURE, Outcome.DENIED),
    ]
    assert default[1].details["count"] == 1 and default[1].details["aggregated"] is True
    system = [r.event for r in _records(served, "system")]
    assert system[0] is EventType.SERVICE_START
    assert EventType.ATTESTATION_SERVED in system


def test_log_key_is_bound_into_attestation(served: Served) -> None:
    with served.client() as client:
        enclave = client.attest()
        key = enclave.log_verifier
        assert key is not None
        assert key.vkey == served.enclave.audit.vkey
        assert client.audit_checkpoint().origin == f"{key.name}/default"


def test_receipt_must_verify_on_arrival(served: Served) -> None:
    core = ClientCore(tenant="default", api_key=TENANT_KEYS["default"], policy=served.policy())
    with served.client() as client:
        enclave = client.attest()
    call = core.seal(enclave, Method.LIST_MODELS, models_pb2.ListModelsRequest())
    payload = models_pb2.ListModelsResponse().SerializeToString()
    other = Signer("veil-enclave", Ed25519PrivateKey.generate())
    forged = other.sign_note("veil-audit-receipt/v1\n{}\n")
    for receipt, message in (
        ("", "enclave answered without an audit receipt"),
        ("not a note", "signed note has no blank line before its signatures"),
        (forged, r"signed note has no signature by a known key \(known: veil-enclave\)"),
    ):
        sealed = seal_response(
            call.response_key,
            method=call.method,
            request_id=call.request_id,
            payload=payload,
            receipt=receipt,
        )
        with pytest.raises(AuditLogError, match=message):
            core.open(enclave, call, sealed, models_pb2.ListModelsResponse())
    assert core.receipts == type(core.receipts)(maxlen=core.receipts.maxlen)


def test_receipt_for_another_exchange_is_refused(served: Served) -> None:
    with served.client() as client:
        client.list_models()
        enclave = client.attest()
        _, note = client._core.receipts[-1]
    core = ClientCore(tenant="default", api_key=TENANT_KEYS["default"], policy=served.policy())
    call = core.seal(enclave, Method.LIST_MODELS, models_pb2.ListModelsRequest())
    sealed = seal_response(
        call.response_key,
        method=call.method,
        request_id=call.request_id,
        payload=models_pb2.ListModelsResponse().SerializeToString(),
        receipt=note,
    )
    with pytest.raises(AuditLogError, match="does not match this exchange"):
        core.open(enclave, call, sealed, common_pb2.SealedResponse())


def test_checkpoints_are_consistent_over_time(served: Served) -> None:
    with served.client() as client:
        client.list_models()
        first = client.audit_checkpoint()
        client.list_models()
        client.list_models()
        newer = client.audit_consistency(first)
    assert newer.size > first.size


def test_tenant_logs_are_separate(served: Served) -> None:
    with served.client("default") as a:
        a.list_models()
        a.list_models()
    with served.client("acme") as b:
        b.list_models()
        checkpoint = b.audit_checkpoint()
        assert checkpoint.origin == "veil-enclave/acme"
        assert checkpoint.size == 1
        assert [r.tenant for r in b.receipts] == ["acme", "acme"]


def _export(served: Served, out: Path, **kw: object) -> Path:
    with served.client() as client:
        client.upload_model(mlp_model(), "m")
        client.infer("m", {"x": X})
        return client.export_audit(out, **kw)  # type: ignore[arg-type]


def test_full_export_verifies_offline_with_attestation(served: Served, tmp_path: Path) -> None:
    out = _export(served, tmp_path / "export", formats=["ocsf", "csv"])
    assert {p.name for p in out.iterdir()} >= {
        "entries.jsonl",
        "checkpoint",
        "log.pub",
        "attestation",
        "ocsf.jsonl",
        "entries.csv",
    }
    check = attestation_check(served.policy(), now=lambda: datetime.now(UTC))
    result = verify_export(out, attestation_check=check)
    assert result.full and result.entry_count == 2
    assert [r.event for _, r in result.records()] == [
        EventType.MODEL_REGISTERED,
        EventType.INFERENCE,
    ]


def test_export_with_swapped_key_fails_the_attestation_binding(
    served: Served, tmp_path: Path
) -> None:
    out = _export(served, tmp_path / "export")
    check = attestation_check(served.policy(), now=lambda: datetime.now(UTC))
    other = Signer.generate("veil-enclave")
    (out / "log.pub").write_text(other.vkey + "\n")
    with pytest.raises(AuditLogError, match="swapped key"):
        verify_export(out, attestation_check=check)


def test_export_under_the_wrong_root_is_refused(served: Served, tmp_path: Path) -> None:
    from veil.enclave.tee._simulated import SimulatedSnp

    out = _export(served, tmp_path / "export")
    other = AttestationPolicy.simulated_for_tests(
        SimulatedSnp.load_or_create(tmp_path / "other").root_pem
    )
    with pytest.raises(Exception, match="untrusted_root"):
        verify_export(
            out, attestation_check=attestation_check(other, now=lambda: datetime.now(UTC))
        )


def test_edited_export_line_is_named(served: Served, tmp_path: Path) -> None:
    out = _export(served, tmp_path / "export")
    lines = (out / "entries.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"inference"', b'"model_deleted"')
    (out / "entries.jsonl").write_bytes(b"".join(lines))
    check = attestation_check(served.policy(), now=lambda: datetime.now(UTC))
    with pytest.raises(AuditLogError, match="line 2"):
        verify_export(out, attestation_check=check)


def test_log_survives_restart_and_exports_under_the_new_key(data_dir: Path, tmp_path: Path) -> None:
    first = start(data_dir)
    with first.client() as client:
        client.upload_model(mlp_model(), "m")
        old_key = client.attest().log_verifier
    first.running.stop(grace=None)
    second = start(data_dir)
    try:
        with second.client() as client:
            client.infer("m", {"x": X})
            assert client.attest().log_verifier != old_key
            out = client.export_audit(tmp_path / "export")
        check = attestation_check(second.policy(), now=lambda: datetime.now(UTC))
        result = verify_export(out, attestation_check=check)
        assert [r.event for _, r in result.records()] == [
            EventType.MODEL_REGISTERED,
            EventType.INFERENCE,
        ]
    finally:
        second.running.stop(grace=None)


def test_cli_export_and_verify(served: Served, tmp_path: Path) -> None:
    with served.client() as client:
        client.list_models()
    root = tmp_path / "root.pem"
    root.write_bytes(served.root_pem)
    key = tmp_path / "key"
    key.write_text(TENANT_KEYS["default"])
    out = tmp_path / "export"
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "veil.sdk.cli", "audit"]
    common = ["--target", served.address, "--trust-root", str(root), "--api-key-file", str(key)]
    exported = subprocess.run(
        [*cmd, "export", *common, "--out", str(out), "--format", "csv"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert exported.returncode == 0, exported.stderr
    assert (out / "entries.csv").exists()
    ok = subprocess.run(
        [*cmd, "verify", str(out), "--trust-root", str(root), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["verified"] is True and doc["tenant"] == "default" and doc["entries"] == 1
    amd = subprocess.run([*cmd, "verify", str(out)], capture_output=True, text=True, timeout=120)
    assert amd.returncode == 1 and "untrusted_root" in amd.stderr
    (out / "entries.jsonl").write_bytes((out / "entries.jsonl").read_bytes() + b"{}\n")
    bad = subprocess.run(
        [*cmd, "verify", str(out), "--trust-root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1


def test_proof_requests_out_of_range_are_refused(served: Served) -> None:
    from veil.sdk import RemoteError

    with served.client() as client:
        client.list_models()
        receipt = client.receipts[0]
        with pytest.raises(RemoteError) as err:
            client.prove_receipt(replace(receipt, leaf_index=10_000))
    assert err.value.code == "INVALID_ARGUMENT"
    assert "is not in a tree of size" in err.value.detail
