"""Client side of the audit log: receipts, proofs against checkpoints, exports with evidence.

The checkpoint and proofs come from the enclave, but they are only accepted when they verify
under the log key that the enclave's *attestation* vouches for.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from google.protobuf.message import DecodeError

from protos.veil.v1 import attestation_pb2, audit_pb2
from sdk._attested import AttestedEnclave, Evidence, verify_enclave
from sdk._errors import AuditLogError
from sdk._protocol import NONCE_LEN
from sdk.attestation._policy import AttestationPolicy
from sdk.audit import (
    Checkpoint,
    Receipt,
    Verifier,
    check_receipt_inclusion,
    verify_checkpoint,
    verify_checkpoint_consistency,
)

__all__ = [
    "EVIDENCE_FILE",
    "NONCE_FILE",
    "attestation_check",
    "checked_checkpoint",
    "checked_consistency",
    "checked_inclusion",
    "write_export",
]

EVIDENCE_FILE = "attestation/evidence.pb"
NONCE_FILE = "attestation/nonce.bin"


def _log_key(enclave: AttestedEnclave) -> Verifier:
    key = enclave.log_verifier
    if key is None:
        raise AuditLogError("the attested enclave publishes no audit log key")
    return key


def checked_checkpoint(
    enclave: AttestedEnclave, tenant: str, response: audit_pb2.CheckpointResponse
) -> Checkpoint:
    """The tenant's checkpoint, verified under the attested log key."""
    key = _log_key(enclave)
    if response.vkey and response.vkey != key.vkey:
        raise AuditLogError("enclave names a log key other than the attested one")
    return verify_checkpoint(response.checkpoint, key, origin=f"{key.name}/{tenant}")


def checked_inclusion(
    enclave: AttestedEnclave,
    receipt: Receipt,
    response: audit_pb2.InclusionProofResponse,
) -> Checkpoint:
    """Prove a receipt's record is in the signed tree the enclave returned."""
    key = _log_key(enclave)
    checkpoint = verify_checkpoint(response.checkpoint, key, origin=receipt.log)
    check_receipt_inclusion(receipt, checkpoint, list(response.proof))
    return checkpoint


def checked_consistency(
    enclave: AttestedEnclave, old: Checkpoint, response: audit_pb2.ConsistencyProofResponse
) -> Checkpoint:
    """Prove the log only grew since ``old``; return the newer, verified checkpoint."""
    key = _log_key(enclave)
    new = verify_checkpoint(response.checkpoint, key, origin=old.origin)
    verify_checkpoint_consistency(old, new, list(response.proof))
    return new


def write_export(
    out_dir: Path, enclave: AttestedEnclave, response: audit_pb2.ExportResponse
) -> Path:
    """Write an export directory: the enclave's files plus the evidence that binds its key."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise AuditLogError(f"export directory {out_dir} is not empty")
    for name, data in response.files.items():
        target = (out_dir / name).resolve()
        if out_dir.resolve() not in target.parents:
            raise AuditLogError(f"export file name {name!r} leaves the export directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (out_dir / "attestation").mkdir(exist_ok=True)
    (out_dir / EVIDENCE_FILE).write_bytes(enclave.evidence.to_proto().SerializeToString())
    (out_dir / NONCE_FILE).write_bytes(enclave.nonce)
    return out_dir


def attestation_check(
    policy: AttestationPolicy, *, now: Callable[[], datetime]
) -> Callable[[Path], str]:
    """For ``verify_export``: verify the saved evidence and return the log key it binds.

    The hardware report, its chain to ``policy``'s roots and the REPORT_DATA binding of the
    claims (which carry the log key) must verify; the key epoch may have ended since.
    """

    def check(directory: Path) -> str:
        try:
            raw = (directory / EVIDENCE_FILE).read_bytes()
            nonce = (directory / NONCE_FILE).read_bytes()
        except OSError as exc:
            raise AuditLogError(f"export has no attestation evidence ({exc.strerror})") from exc
        try:
            message = attestation_pb2.AttestationEvidence.FromString(raw)
        except DecodeError as exc:
            raise AuditLogError(f"{EVIDENCE_FILE} is not valid attestation evidence") from exc
        if len(nonce) != NONCE_LEN:
            raise AuditLogError(f"{NONCE_FILE} is {len(nonce)} bytes, expected {NONCE_LEN}")
        enclave = verify_enclave(
            Evidence.from_proto(message),
            nonce=nonce,
            policy=policy,
            now=now(),
            require_unexpired=False,
        )
        return _log_key(enclave).vkey

    return check
