"""Client side of the audit log: receipts, proofs against checkpoints, exports with evidence.

The checkpoint and proofs come from the enclave, but they are only accepted when they verify
under the log key that the enclave's *attestation* vouches for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from google.protobuf.message import DecodeError

from veil.sdk.attestation._policy import AttestationPolicy
from veil.sdk.audit import (
    Checkpoint,
    Receipt,
    Verifier,
    check_receipt_inclusion,
    verify_checkpoint,
    verify_checkpoint_consistency,
)
from veil.sdk.errors import AuditFailure, AuditLogError, ProtocolError
from veil.sdk.evidence import AttestedEnclave, Evidence, verify_enclave
from veil.sdk.protocol import NONCE_LEN
from veil.sdk.replicas import verify_replica_certificate
from veil.v1 import attestation_pb2, audit_pb2

__all__ = [
    "EVIDENCE_FILE",
    "NONCE_FILE",
    "ExportReceiver",
    "attestation_check",
    "checked_checkpoint",
    "checked_consistency",
    "checked_inclusion",
]

EVIDENCE_FILE = "attestation/evidence.pb"
NONCE_FILE = "attestation/nonce.bin"
# A replica's export (docs/SCALE-OUT.md): the coordinator's certificate naming its log key.
REPLICA_FILE = "attestation/replica.pb"


def _log_key(enclave: AttestedEnclave) -> Verifier:
    key = enclave.log_verifier
    if key is None:
        raise AuditLogError(
            "the attested enclave publishes no audit log key", reason=AuditFailure.MISSING
        )
    return key


def checked_checkpoint(
    enclave: AttestedEnclave, tenant: str, response: audit_pb2.CheckpointResponse
) -> Checkpoint:
    """The tenant's checkpoint, verified under the attested log key."""
    key = _log_key(enclave)
    if response.vkey and response.vkey != key.vkey:
        raise AuditLogError(
            "enclave names a log key other than the attested one", reason=AuditFailure.MISMATCH
        )
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


def _empty_dir(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise AuditLogError(f"export directory {out_dir} is not empty")
    return out_dir


def _target(out_dir: Path, name: str) -> Path:
    target = (out_dir / name).resolve()
    if out_dir.resolve() not in target.parents:
        raise AuditLogError(f"export file name {name!r} leaves the export directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _add_evidence(out_dir: Path, enclave: AttestedEnclave) -> Path:
    (out_dir / "attestation").mkdir(exist_ok=True)
    (out_dir / EVIDENCE_FILE).write_bytes(enclave.evidence.to_proto().SerializeToString())
    (out_dir / NONCE_FILE).write_bytes(enclave.nonce)
    return out_dir


class ExportReceiver:
    """Writes a streamed export to disk as its (already opened) messages arrive.

    Each file's chunks must come in order and contiguously; the final summary must list exactly
    the files received (empty ones too) with their sizes and SHA-256, which the receipt on that
    summary binds. On any failure the files written so far are removed (``abort``).
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = _empty_dir(out_dir)
        self._sizes: dict[str, int] = {}
        self._hashes: dict[str, hashlib._Hash] = {}
        self._name = ""
        self._file: BinaryIO | None = None
        self._done = False

    def add(self, message: audit_pb2.ExportStreamMessage, *, final: bool) -> None:
        if self._done:
            raise ProtocolError("export stream continued after its summary")
        kind = message.WhichOneof("kind")
        if final != (kind == "summary"):
            raise ProtocolError("export stream must end with exactly one summary")
        if kind == "chunk":
            self._chunk(message.chunk)
        else:
            self._summary(message.summary)

    def _chunk(self, chunk: audit_pb2.ExportChunk) -> None:
        if chunk.name != self._name:
            if chunk.name in self._sizes:
                raise ProtocolError(f"export file {chunk.name!r} arrived in two runs")
            self._close_file()
            self._file = _target(self.out_dir, chunk.name).open("xb")
            self._name = chunk.name
            self._sizes[chunk.name] = 0
            self._hashes[chunk.name] = hashlib.sha256()
        if chunk.offset != self._sizes[chunk.name]:
            raise ProtocolError(
                f"export file {chunk.name!r}: chunk at {chunk.offset}, expected "
                f"{self._sizes[chunk.name]}"
            )
        assert self._file is not None
        self._file.write(chunk.data)
        self._sizes[chunk.name] += len(chunk.data)
        self._hashes[chunk.name].update(chunk.data)

    def _summary(self, summary: audit_pb2.ExportSummary) -> None:
        self._close_file()
        listed = {f.name: f for f in summary.files}
        if len(listed) != len(summary.files):
            raise ProtocolError("export summary lists a file twice")
        for name in set(self._sizes) - set(listed):
            raise AuditLogError(f"export file {name!r} is not in the signed summary")
        for name, entry in listed.items():
            if name not in self._sizes:
                if entry.size:
                    raise AuditLogError(f"export file {name!r} never arrived")
                _target(self.out_dir, name).touch(exist_ok=False)
                self._sizes[name] = 0
                self._hashes[name] = hashlib.sha256()
            if self._sizes[name] != entry.size or self._hashes[name].digest() != entry.sha256:
                raise AuditLogError(f"export file {name!r} does not match the signed summary")
        self._done = True

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def finish(self, enclave: AttestedEnclave, replica_certificate: bytes = b"") -> Path:
        """After the summary: add the evidence that binds the log key (and, from a replica,
        the certificate naming its log key); the export is complete."""
        if not self._done:
            raise ProtocolError("export stream ended without its summary")
        out = _add_evidence(self.out_dir, enclave)
        if replica_certificate:
            (out / REPLICA_FILE).write_bytes(replica_certificate)
        return out

    def abort(self) -> None:
        """Remove what was written, leaving the directory empty for a retry."""
        self._close_file()
        for name in self._sizes:
            (self.out_dir / name).unlink(missing_ok=True)


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
        if enclave.claims.manifest_sha256:  # a replica: its own log key, certified
            try:
                certificate = (directory / REPLICA_FILE).read_bytes()
            except OSError as exc:
                raise AuditLogError(
                    f"a replica's export has no {REPLICA_FILE}", reason=AuditFailure.MISSING
                ) from exc
            replica = verify_replica_certificate(
                certificate,
                coordinator_key=enclave.claims.audit_log_key,
                manifest_sha256=enclave.claims.manifest_sha256,
                policy=policy,
                now=now(),
            )
            return replica.log_verifier.vkey
        return _log_key(enclave).vkey

    return check
