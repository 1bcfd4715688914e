"""Client side of DP training: typed results, and offline verification of training certificates.

A training certificate is a C2SP signed note whose text is
``veil-training-certificate/v1\\n<canonical JSON of the record>\\n``, signed by the audit log
key that the enclave's attestation binds. A saved record (``veil train --json``) carries the
certificate and the attestation evidence, so anyone can verify it offline with the SDK alone.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

from google.protobuf.message import DecodeError

from veil.sdk._models import ModelInfo
from veil.sdk.attestation._policy import AttestationPolicy
from veil.sdk.audit import SignedNote
from veil.sdk.errors import AuditFailure, AuditLogError, ProtocolError
from veil.sdk.evidence import AttestedEnclave, Evidence, verify_enclave
from veil.v1 import attestation_pb2, training_pb2

__all__ = [
    "CERTIFICATE_HEADER",
    "BudgetInfo",
    "DatasetInfo",
    "TrainedWatermark",
    "TrainingOutcome",
    "TrainingProgress",
    "VerifiedTrainingRecord",
    "verify_training_record",
]

CERTIFICATE_HEADER = "veil-training-certificate/v1"
REQUIRED_KEYS = (
    "model",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "delta",
    "epsilon",
    "accountant",
    "max_grad_norm",
    "dataset_sha256",
    "feature_min",
    "feature_max",
    "device",
    "model_sha256",
    "code_measurement",
)


@dataclass(frozen=True)
class DatasetInfo:
    sha256: str
    format: str
    rows: int
    feature_shape: tuple[int, ...]
    num_classes: int
    size: int

    @classmethod
    def from_proto(cls, msg: training_pb2.DatasetInfo) -> DatasetInfo:
        return cls(
            sha256=msg.sha256,
            format=msg.format,
            rows=msg.rows,
            feature_shape=tuple(msg.feature_shape),
            num_classes=msg.num_classes,
            size=msg.size,
        )


@dataclass(frozen=True)
class BudgetInfo:
    """A dataset's privacy budget: what it had, what is spent, what is left, of epsilon and delta.

    A job is charged both its epsilon and its delta, and is refused when either would pass its
    budget. ``limited_by`` names the one that refuses the next job, and
    ``allows(epsilon=, delta=)`` says whether a job of that size still fits.
    """

    epsilon_budget: float
    epsilon_spent: float
    epsilon_remaining: float
    delta_budget: float
    delta_spent: float

    @property
    def delta_remaining(self) -> float:
        return max(0.0, self.delta_budget - self.delta_spent)

    @property
    def limited_by(self) -> str:
        """``"epsilon"`` or ``"delta"``: which budget refuses the next job that leaves its delta
        to the enclave (``train(delta=None)``, the default).

        Such a job gets the remaining delta in proportion to its share of the remaining epsilon,
        so delta runs out only when jobs that chose a larger delta have spent it all: then it
        is ``"delta"``. A job that names its own delta may also be refused for delta; ask
        ``allows(epsilon=..., delta=...)``.
        """
        return "delta" if self.delta_remaining <= 0 < self.epsilon_remaining else "epsilon"

    def allows(self, *, epsilon: float, delta: float | None = None) -> bool:
        """Whether a job charged ``epsilon`` and ``delta`` (None: its proportional share of what
        is left, as the enclave gives it) fits in what is left."""
        if delta is None:
            return 0 < epsilon <= self.epsilon_remaining and self.delta_remaining > 0
        return epsilon <= self.epsilon_remaining and delta <= self.delta_remaining

    @classmethod
    def from_proto(cls, msg: training_pb2.BudgetResponse) -> BudgetInfo:
        return cls(
            epsilon_budget=msg.epsilon_budget,
            epsilon_spent=msg.epsilon_spent,
            epsilon_remaining=msg.epsilon_remaining,
            delta_budget=msg.delta_budget,
            delta_spent=msg.delta_spent,
        )


@dataclass(frozen=True)
class TrainingProgress:
    """Reported after a training step (``veil.privacy`` calls it ``ProgressEvent``).

    ``epsilon`` bounds what is spent so far from above: it is the epsilon after the last step
    of the current epoch (exact at epoch ends).
    """

    epoch: int
    step: int
    total_steps: int
    loss: float
    epsilon: float


@dataclass(frozen=True)
class TrainedWatermark:
    """The mark embedded while training: the owner-signed claim and the enclave's own check.

    The training certificate names the claim's digest (``watermark_claim_sha256``)."""

    claim_json: str
    p_value: float
    matches: int
    n_bits: int


@dataclass(frozen=True)
class TrainingOutcome:
    """The registered model, the certified training record, and what proves it."""

    model: ModelInfo
    record: Mapping[str, Any]
    certificate: str = field(repr=False)
    evidence: Evidence = field(repr=False)
    nonce: bytes = field(repr=False)
    watermark: TrainedWatermark | None = None
    """The owner's mark when the job was asked to embed one (its claim, the enclave's check)."""

    def __repr__(self) -> str:  # short: never the evidence bytes or the certificate
        return (
            f"TrainingOutcome(model={self.model.ref!r}, epsilon={self.record.get('epsilon')}, "
            f"delta={self.record.get('delta')}, model_sha256={self.model.sha256[:16]}…)"
        )

    def to_json(self) -> dict[str, Any]:
        """The self-contained record ``veil train verify`` checks offline."""
        return {
            **self.record,
            "certificate": self.certificate,
            "attestation": {
                "evidence": base64.b64encode(self.evidence.to_proto().SerializeToString()).decode(),
                "nonce": base64.b64encode(self.nonce).decode(),
            },
        }


def _record_from_note(note: str) -> tuple[SignedNote, dict[str, Any]]:
    parsed = SignedNote.from_text(note)
    header, _, body = parsed.text.partition("\n")
    if header != CERTIFICATE_HEADER:
        raise AuditLogError("not a Veil training certificate")
    try:
        record = json.loads(body)
    except json.JSONDecodeError as exc:
        raise AuditLogError("training certificate body is not JSON") from exc
    if not isinstance(record, dict):
        raise AuditLogError("training certificate body is not a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise AuditLogError(f"training certificate lacks {missing}")
    return parsed, record


def outcome_from_result(
    result: training_pb2.TrainResult, enclave: AttestedEnclave
) -> TrainingOutcome:
    """Check a fresh result: its certificate verifies under the attested log key."""
    key = enclave.log_verifier
    if key is None:
        raise AuditLogError("the attested enclave publishes no signing key for certificates")
    note, record = _record_from_note(result.certificate)
    note.verify(key)
    if record["code_measurement"] != enclave.measurement:
        raise AuditLogError(
            "certificate names a code measurement other than the attested one",
            reason=AuditFailure.MISMATCH,
        )
    if record["model_sha256"] != result.model.sha256:
        raise ProtocolError("training certificate names another model than was registered")
    mark = None
    if result.HasField("watermark"):
        mark = TrainedWatermark(
            claim_json=result.watermark.claim_json,
            p_value=result.watermark.p_value,
            matches=result.watermark.matches,
            n_bits=result.watermark.n_bits,
        )
        canonical = json.dumps(
            json.loads(mark.claim_json), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        )
        if record.get("watermark_claim_sha256") != hashlib.sha256(canonical.encode()).hexdigest():
            raise ProtocolError("training certificate does not name the returned watermark claim")
    return TrainingOutcome(
        model=ModelInfo.from_proto(result.model),
        record=MappingProxyType(record),
        certificate=result.certificate,
        evidence=enclave.evidence,
        nonce=enclave.nonce,
        watermark=mark,
    )


@dataclass(frozen=True)
class VerifiedTrainingRecord:
    """What a verified training record proves: these DP parameters produced this model, in an
    enclave running this code, as the enclave's attested key certifies."""

    record: Mapping[str, Any]
    measurement: str
    model_sha256: str
    dataset_sha256: str
    epsilon: float
    delta: float
    insecure_root: bool


def verify_training_record(
    doc: Mapping[str, Any], policy: AttestationPolicy, *, now: datetime
) -> VerifiedTrainingRecord:
    """Verify a saved record offline: evidence under ``policy``, certificate under the key that
    evidence binds, and every field of the document equal to the certified one."""
    try:
        attestation = doc["attestation"]
        raw = base64.b64decode(attestation["evidence"], validate=True)
        nonce = base64.b64decode(attestation["nonce"], validate=True)
        certificate = doc["certificate"]
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditLogError(f"training record is missing or has a malformed {exc}") from exc
    try:
        evidence = Evidence.from_proto(attestation_pb2.AttestationEvidence.FromString(raw))
    except DecodeError as exc:
        raise AuditLogError("training record's attestation evidence does not parse") from exc
    enclave = verify_enclave(evidence, nonce=nonce, policy=policy, now=now, require_unexpired=False)
    key = enclave.log_verifier
    if key is None:
        raise AuditLogError("the attested enclave publishes no signing key for certificates")
    note, record = _record_from_note(str(certificate))
    note.verify(key)
    shown = {k: v for k, v in doc.items() if k not in {"certificate", "attestation"}}
    if shown != record:
        changed = sorted(k for k in set(shown) | set(record) if shown.get(k) != record.get(k))
        raise AuditLogError(
            f"training record differs from its certificate in {changed}",
            reason=AuditFailure.MISMATCH,
        )
    if record["code_measurement"] != enclave.measurement:
        raise AuditLogError(
            "certificate names a code measurement the evidence does not show",
            reason=AuditFailure.MISMATCH,
        )
    return VerifiedTrainingRecord(
        record=MappingProxyType(record),
        measurement=enclave.measurement,
        model_sha256=str(record["model_sha256"]),
        dataset_sha256=str(record["dataset_sha256"]),
        epsilon=float(record["epsilon"]),
        delta=float(record["delta"]),
        insecure_root=enclave.insecure_root,
    )
