"""The SDK's error contract: every failure a caller can cause is a ``VeilError`` with a reason.

No ``FileNotFoundError``, ``ValueError`` or raw ``grpc.RpcError`` leaves the public API; every
family carries a machine-readable ``reason`` enum; ``RemoteReason`` is the one vocabulary the
enclave's status table sends and the SDK reads.
"""

from __future__ import annotations

import base64
import re
import socket
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from enclave_support import TENANT_KEYS, Served

from veil.enclave import _status
from veil.sdk import (
    AttestationError,
    AttestationFailure,
    AuditFailure,
    AuditLogError,
    BudgetInfo,
    Client,
    ConfigError,
    ConfigFailure,
    Evidence,
    PrivacyBudgetExceeded,
    ProtocolError,
    ProtocolFailure,
    RemoteError,
    RemoteReason,
    TrustRoot,
    VeilError,
    WatermarkError,
    WatermarkFailure,
    verify_enclave,
    verify_training_record,
)
from veil.sdk.attestation import AttestationPolicy
from veil.sdk.audit import MerkleTree, hash_leaf, verify_consistency, verify_inclusion
from veil.sdk.sealing import CLEAR_MESSAGES, clear_message
from veil.v1.attestation_pb2 import AttestationEvidence

ROOT = Path(__file__).resolve().parents[1]
GARBAGE_PEM = b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"


def _offline(served_root: bytes, **kwargs: object) -> Client:
    """A client whose target nothing listens on: failures before the wire must not need one."""
    kwargs.setdefault("api_key", TENANT_KEYS["default"])
    return Client(
        "127.0.0.1:9",
        policy=AttestationPolicy.simulated_for_tests(served_root),
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def root_pem(tee_template: Path) -> bytes:
    from veil.enclave.tee._simulated import SimulatedSnp

    return SimulatedSnp.load_or_create(tee_template.parent).root_pem


# -- reasons: one enum per family ---------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "enum", "default"),
    [
        (ConfigError("x"), ConfigFailure, ConfigFailure.INVALID_VALUE),
        (WatermarkError("x"), WatermarkFailure, WatermarkFailure.INVALID),
        (AuditLogError("x"), AuditFailure, AuditFailure.MALFORMED),
        (ProtocolError("x"), ProtocolFailure, ProtocolFailure.MALFORMED),
        (RemoteError("NOT_FOUND", "x", reason="not-found"), RemoteReason, RemoteReason.NOT_FOUND),
    ],
)
def test_every_family_carries_a_typed_reason(error: VeilError, enum: type, default: object) -> None:
    assert isinstance(error.reason, enum)  # type: ignore[attr-defined]
    assert error.reason is default  # type: ignore[attr-defined]
    assert str(error).endswith("x")


def test_remote_reason_reads_what_it_does_not_know_as_unknown() -> None:
    assert RemoteError("INTERNAL", "x", reason="from-the-future").reason is RemoteReason.UNKNOWN
    assert RemoteError("UNAVAILABLE", "x").reason is RemoteReason.NONE
    assert RemoteError("X", "y", reason="key-rotated").reason == "key-rotated"  # a str, too


def test_enclave_status_table_speaks_only_the_shared_vocabulary() -> None:
    sent = {reason for _, _, reason in _status._TABLE}
    assert all(isinstance(reason, RemoteReason) for reason in sent)
    _, reason, _ = _status.status_for(RuntimeError("boom"))
    assert reason is RemoteReason.INTERNAL
    # Every reason the enclave can send has its fixed clear message, and nothing else has one.
    sendable = set(RemoteReason) - {RemoteReason.NONE, RemoteReason.UNKNOWN}
    assert set(CLEAR_MESSAGES) == sendable
    assert sent | {RemoteReason.INTERNAL} == sendable
    assert clear_message("from-the-future") == "error"


def test_protocol_doc_lists_exactly_the_shared_vocabulary() -> None:
    section = (ROOT / "docs" / "PROTOCOL.md").read_text().split("## 7. Errors", 1)[1]
    table = next(part for part in section.split("\n\n") if part.startswith("| status"))
    documented = set(re.findall(r"^\| `[A-Z_]+` \| `([a-z-]+)` \|", table, re.M))
    assert documented == {r.value for r in RemoteReason} - {"", "unknown"}
    for reason in documented:
        assert f"`{CLEAR_MESSAGES[RemoteReason(reason)]}" in table


# -- failures before the wire: files, values, inputs --------------------------------------


def test_missing_and_unreadable_files_are_config_errors(root_pem: bytes, tmp_path: Path) -> None:
    with _offline(root_pem) as client:
        with pytest.raises(ConfigError) as err:
            client.upload_model(tmp_path / "absent.onnx", name="m")
        assert err.value.reason is ConfigFailure.MISSING_FILE
        assert "absent.onnx does not exist" in str(err.value)
        with pytest.raises(ConfigError) as err:
            client.upload_model(tmp_path, name="m")  # a directory
        assert err.value.reason is ConfigFailure.UNREADABLE
        with pytest.raises(ConfigError) as err:
            client.upload_dataset(tmp_path / "absent.npz")
        assert err.value.reason is ConfigFailure.MISSING_FILE
        with pytest.raises(ConfigError) as err:
            client.embed_watermark("m", tmp_path / "absent.json", "0" * 64)
        assert err.value.reason is ConfigFailure.MISSING_FILE
    with pytest.raises(ConfigError) as err:
        _offline(root_pem, api_key=tmp_path / "absent.key")
    assert err.value.reason is ConfigFailure.MISSING_FILE


def test_bad_values_are_config_errors(root_pem: bytes, tmp_path: Path) -> None:
    for key in ("", "  \n"):
        with pytest.raises(ConfigError) as err:
            _offline(root_pem, api_key=key)
        assert err.value.reason is ConfigFailure.MISSING_VALUE
    with pytest.raises(ConfigError):
        Client("", api_key="k", policy=AttestationPolicy.simulated_for_tests(root_pem))
    with _offline(root_pem) as client:
        with pytest.raises(ConfigError) as err:
            client.upload_dataset(tmp_path / "data.xlsx")
        assert err.value.reason is ConfigFailure.UNSUPPORTED and "format=" in str(err.value)
        with pytest.raises(ConfigError) as err:
            client.upload_dataset(b"a,b\n")
        assert err.value.reason is ConfigFailure.MISSING_VALUE
        with pytest.raises(ConfigError) as err:
            client.infer("m", {})
        assert err.value.reason is ConfigFailure.MISSING_VALUE
        with pytest.raises(ConfigError):
            client.infer("m", {"x": [[1.0, 2.0], [3.0]]})  # ragged
        with pytest.raises(ProtocolError) as perr:
            client.infer("m", {"x": ["a", "b"]})
        assert perr.value.reason is ProtocolFailure.UNSUPPORTED
        with pytest.raises(ConfigError):
            client.export_audit(tmp_path / "out", since=-1)
        with pytest.raises(ConfigError):
            client.train("0" * 64, target_epsilon=1.0, spec={"hidden": ["wide"]})


@pytest.mark.parametrize(
    "key",
    ["{not json", "{}", {"watermark": {}}, {"owner_private_key": "zz", "watermark": {}}],
)
def test_malformed_watermark_keys_are_watermark_errors(root_pem: bytes, key: object) -> None:
    with _offline(root_pem) as client, pytest.raises(WatermarkError) as err:
        client.embed_watermark("m", key, "0" * 64)  # type: ignore[arg-type]
    assert err.value.reason is WatermarkFailure.MALFORMED_KEY


def test_a_channel_that_fails_is_a_remote_error_not_a_grpc_one(root_pem: bytes) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy = AttestationPolicy.simulated_for_tests(root_pem)
    with (
        Client(f"127.0.0.1:{port}", api_key="k", policy=policy, timeout=5) as client,
        pytest.raises(RemoteError) as err,
    ):
        client.list_models()
    assert not isinstance(err.value, grpc.RpcError)
    assert err.value.code == "UNAVAILABLE" and err.value.reason is RemoteReason.NONE


@pytest.mark.parametrize(
    "pem",
    [GARBAGE_PEM, b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"],
)
def test_garbage_pem_is_one_line_without_parser_internals(pem: bytes) -> None:
    with pytest.raises(AttestationError) as err:
        TrustRoot.from_pem(pem)
    message = str(err.value)
    assert err.value.reason is AttestationFailure.MALFORMED
    assert "\n" not in message and "ParseError" not in message and "{" not in message
    assert "not a well-formed" in message


# -- failures on the wire -----------------------------------------------------------------


def test_api_key_file_is_read_and_stripped(served: Served, tmp_path: Path) -> None:
    key_file = tmp_path / "default.key"
    key_file.write_text(TENANT_KEYS["default"] + "\n")
    with served.client(api_key=key_file) as client:
        assert client.list_models() == []


def test_export_into_a_file_is_a_config_error(served: Served, tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("a file, not a directory")
    with served.client() as client, pytest.raises(ConfigError) as err:
        client.export_audit(target)
    assert err.value.reason is ConfigFailure.UNREADABLE


def test_remote_refusals_carry_the_shared_reason(served: Served) -> None:
    with served.client() as client, pytest.raises(RemoteError) as err:
        client.delete_model("absent")
    assert err.value.reason is RemoteReason.NOT_FOUND and err.value.code == "NOT_FOUND"
    with served.client(api_key="wrong") as client, pytest.raises(RemoteError) as err:
        client.list_models()
    assert err.value.reason is RemoteReason.UNAUTHENTICATED


def test_budget_exhaustion_is_typed_with_what_is_left() -> None:
    exc = PrivacyBudgetExceeded("over", remaining_epsilon=1.5, remaining_delta=2e-6)
    assert (exc.remaining_epsilon, exc.remaining_delta) == (1.5, 2e-6)
    assert isinstance(exc, VeilError)


def test_audit_failures_say_which_check_failed() -> None:
    tree = MerkleTree()
    for i in range(5):
        tree.append_hash(hash_leaf(f"leaf {i}".encode()))
    root = tree.root()
    proof = tree.inclusion_proof(2)
    with pytest.raises(AuditLogError) as err:
        verify_inclusion(hash_leaf(b"not leaf 2"), 2, 5, proof, root)
    assert err.value.reason is AuditFailure.BAD_PROOF
    with pytest.raises(AuditLogError) as err:
        verify_consistency(5, 3, root, root, [])
    assert err.value.reason is AuditFailure.BAD_PROOF
    with pytest.raises(AuditLogError) as err:
        verify_inclusion(hash_leaf(b"x"), 2, 5, [b"short"], root)
    assert err.value.reason is AuditFailure.MALFORMED


def test_saved_records_and_evidence_fail_with_veil_errors(root_pem: bytes) -> None:
    policy = AttestationPolicy.simulated_for_tests(root_pem)
    now = datetime.now(UTC)
    garbage = base64.b64encode(b"\xff\xff\xff not a protobuf").decode()
    doc = {"certificate": "", "attestation": {"evidence": garbage, "nonce": ""}}
    with pytest.raises(AuditLogError, match="does not parse"):
        verify_training_record(doc, policy, now=now)
    with pytest.raises(ConfigError, match="nonce must be"):
        verify_enclave(
            Evidence.from_proto(AttestationEvidence()), nonce=b"", policy=policy, now=now
        )


def test_budget_says_what_limits_the_next_job() -> None:
    # README's old example: delta 1e-5 against the default delta budget 1e-5 leaves epsilon 7.
    spent_delta = BudgetInfo(10.0, 3.0, 7.0, 1e-5, 1e-5)
    assert spent_delta.delta_remaining == 0.0 and spent_delta.limited_by == "delta"
    assert not spent_delta.allows(epsilon=1.0, delta=1e-6)
    fresh = BudgetInfo(10.0, 3.0, 7.0, 1e-5, 1e-6)
    assert fresh.limited_by == "epsilon" and fresh.allows(epsilon=3.0, delta=1e-6)
    assert not fresh.allows(epsilon=8.0, delta=1e-6)


def test_policy_inputs_fail_with_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        AttestationPolicy.simulated_for_tests(tmp_path / "absent.pem")
    assert err.value.reason is ConfigFailure.MISSING_FILE
    with pytest.raises(ConfigError, match="is not hex"):
        AttestationPolicy.production(measurements=["<96 hex digits>"])
    with pytest.raises(AttestationError) as aerr:
        AttestationPolicy.simulated_for_tests(GARBAGE_PEM)
    assert aerr.value.reason is AttestationFailure.MALFORMED
