"""Audit records (canonical JSON, keyed digests) and receipts (sign in enclave, verify in sdk)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.enclave.audit import AuditLog, Signer
from veil.sdk.audit import (
    AuditRecord,
    Checkpoint,
    DigestKey,
    EventType,
    Outcome,
    canonical_json,
    check_receipt_inclusion,
    verify_checkpoint,
    verify_receipt,
)
from veil.sdk.errors import AuditLogError

NOW = datetime(2026, 11, 28, 3, 0, 0, 123456, tzinfo=UTC)

_keys = st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.text(st.characters(codec="utf-8"), max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_canonical_json_is_rfc8785(value: dict[str, Any]) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


def _record(**overrides: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "now": NOW,
        "event": EventType.INFERENCE,
        "outcome": Outcome.SUCCESS,
        "tenant": "acme",
        "origin": "ipv4:10.0.0.7:5123",
        "key_id": "key-1",
        "resource": "model:resnet",
        "details": {"request_digest": "hmac-sha256:00", "latency_ms": 12},
    }
    fields.update(overrides)
    return AuditRecord.create(**fields)


def test_record_line_round_trip_and_golden_form() -> None:
    record = _record()
    line = record.to_line()
    assert line == (
        b'{"details":{"latency_ms":12,"request_digest":"hmac-sha256:00"},"event":"inference",'
        b'"key_id":"key-1","origin":"ipv4:10.0.0.7:5123","outcome":"success",'
        b'"resource":"model:resnet","tenant":"acme","time":"2026-11-28T03:00:00.123456Z","v":1}'
    )
    assert AuditRecord.from_line(line) == record
    assert record.when == NOW


def test_non_utc_time_is_normalised_and_naive_refused() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert _record(now=NOW.astimezone(plus2)).time == "2026-11-28T03:00:00.123456Z"
    with pytest.raises(AuditLogError, match="timezone-aware"):
        _record(now=datetime(2026, 1, 1))


@pytest.mark.parametrize(
    "details",
    [
        {"ratio": 0.5},  # floats have no single canonical form here
        {"Bad-Key": 1},
        {"big": 2**60},
        {"obj": object()},
        {"s": "\ud800"},  # lone surrogate
    ],
)
def test_invalid_details_are_rejected(details: dict[str, Any]) -> None:
    with pytest.raises(AuditLogError):
        _record(details=details)


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b'{"v":1}',
        b' {"details":{},"event":"inference","key_id":null,"origin":"o","outcome":"success",'
        b'"resource":null,"tenant":"acme","time":"2026-11-28T03:00:00.123456Z","v":1}',
        b'{"details":{},"event":"teleport","key_id":null,"origin":"o","outcome":"success",'
        b'"resource":null,"tenant":"acme","time":"2026-11-28T03:00:00.123456Z","v":1}',
        b'{"details":{},"event":"inference","key_id":null,"origin":"o","outcome":"success",'
        b'"resource":null,"tenant":"acme","time":"2026-11-28 03:00:00","v":1}',
        b'{"details":{},"event":"inference","key_id":null,"origin":"o","outcome":"success",'
        b'"resource":null,"tenant":"../etc","time":"2026-11-28T03:00:00.123456Z","v":1}',
    ],
)
def test_malformed_lines_are_rejected(line: bytes) -> None:
    with pytest.raises(AuditLogError):
        AuditRecord.from_line(line)


def test_digest_key_is_hmac_sha256_and_redacted() -> None:
    key = DigestKey(bytes(range(32)))
    assert (
        key.digest(b"secret prompt")
        == "hmac-sha256:" + hmac.new(bytes(range(32)), b"secret prompt", hashlib.sha256).hexdigest()
    )
    assert "0001" not in repr(key)
    with pytest.raises(AuditLogError):
        DigestKey(b"short")


@pytest.fixture
def log(tmp_path: Path) -> Any:
    audit = AuditLog(
        tmp_path / "log",
        Signer.generate("veil.test"),
        clock=lambda: NOW,
        digest_key=DigestKey(bytes(32)),
        checkpoint_interval=None,
    )
    yield audit
    audit.close()


def test_receipt_verifies_on_arrival_and_later_proves_inclusion(log: AuditLog) -> None:
    req, resp = log.digest(b"request ciphertext"), log.digest(b"response ciphertext")
    appended = log.append_with_receipt(
        _record(), request_digest=req, response_digest=resp, model_digest="sha256:ab"
    )
    receipt = verify_receipt(
        appended.receipt, log.verifier, tenant="acme", request_digest=req, response_digest=resp
    )
    assert (receipt.leaf_index, receipt.tenant, receipt.model_digest) == (0, "acme", "sha256:ab")
    assert receipt.when == NOW and receipt.leaf_hash == appended.leaf_hash
    for i in range(6):
        log.append(_record(details={"n": i}))
    checkpoint = verify_checkpoint(log.checkpoint("acme"), log.verifier)
    assert checkpoint.size == 7
    check_receipt_inclusion(
        receipt, checkpoint, log.inclusion_proof("acme", receipt.leaf_index, checkpoint.size)
    )
    with pytest.raises(AuditLogError, match="does not lead to the root"):
        check_receipt_inclusion(
            receipt, checkpoint, log.inclusion_proof("acme", 1, checkpoint.size)
        )


def test_receipt_for_another_exchange_or_key_is_rejected(log: AuditLog) -> None:
    appended = log.append_with_receipt(
        _record(), request_digest="sha256:aa", response_digest="sha256:bb"
    )
    with pytest.raises(AuditLogError, match="request_digest"):
        verify_receipt(appended.receipt, log.verifier, request_digest="sha256:cc")
    with pytest.raises(AuditLogError, match="tenant"):
        verify_receipt(appended.receipt, log.verifier, tenant="other")
    with pytest.raises(AuditLogError, match="no signature by a known key"):
        verify_receipt(appended.receipt, Signer.generate("veil.test").verifier)
    forged = appended.receipt.replace('"leaf_index":0', '"leaf_index":1')
    with pytest.raises(AuditLogError, match="does not verify"):
        verify_receipt(forged, log.verifier)


def test_receipt_not_yet_in_checkpoint_or_other_log(log: AuditLog) -> None:
    appended = log.append_with_receipt(
        _record(), request_digest="sha256:aa", response_digest="sha256:bb"
    )
    receipt = verify_receipt(appended.receipt, log.verifier)
    empty = Checkpoint(log.origin("acme"), 0, bytes(32))
    with pytest.raises(AuditLogError, match="not yet in the tree"):
        check_receipt_inclusion(receipt, empty, [])
    other = Checkpoint(log.origin("other"), 1, receipt.leaf_hash)
    with pytest.raises(AuditLogError, match="checkpoint is for"):
        check_receipt_inclusion(receipt, other, [])


def test_checkpoint_cannot_pass_as_receipt(log: AuditLog) -> None:
    log.append(_record())
    with pytest.raises(AuditLogError, match="receipt text"):
        verify_receipt(log.checkpoint("acme"), log.verifier)
