"""An enclave whose evidence verified: the only thing the SDK will seal data to."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType

from google.protobuf.message import DecodeError

from veil.sdk.attestation._composite import VerifiedComposite, verify_composite
from veil.sdk.attestation._policy import AttestationPolicy
from veil.sdk.attestation._roots import load_certificates
from veil.sdk.attestation._snp_verify import SnpCertChain, VerifiedSnpReport, verify_snp_report
from veil.sdk.attestation.nvidia import SpdmEvidence, verify_rim
from veil.sdk.attestation.tdx import TdxCollateral, VerifiedTdxQuote, verify_tdx_quote
from veil.sdk.audit._note import Verifier
from veil.sdk.errors import (
    AttestationError,
    AttestationFailure,
    AuditLogError,
    ConfigError,
    ProtocolError,
)
from veil.sdk.protocol import (
    NONCE_LEN,
    PROTOCOL_VERSION,
    PublicKey,
    Suite,
    claims_digest,
    decode_public_key,
    report_data_for,
)
from veil.v1 import attestation_pb2

__all__ = [
    "AttestedEnclave",
    "EnclaveClaims",
    "Evidence",
    "from_ms",
    "to_ms",
    "verify_enclave",
]


def to_ms(ts: datetime) -> int:
    """Unix milliseconds, as the wire carries time."""
    return int(ts.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True)
class EnclaveClaims:
    """What the enclave states about itself; the hardware report commits to these exact bytes."""

    raw: bytes
    key_id: str
    keys: Mapping[Suite, bytes]
    issued_at: datetime
    expires_at: datetime
    measurement_hex: str
    audit_log_key: bytes
    audit_log_origin: str
    # Replicated deployments (1.3): the manifest's SHA-256; audit_log_key is then the
    # coordinator's key, which certifies each replica's log key (veil.sdk.replicas).
    manifest_sha256: bytes = b""

    @classmethod
    def from_bytes(cls, raw: bytes) -> EnclaveClaims:
        msg = attestation_pb2.EnclaveClaims()
        try:
            msg.ParseFromString(raw)
        except DecodeError as exc:
            raise AttestationError(
                AttestationFailure.MALFORMED, "enclave claims are not a valid EnclaveClaims"
            ) from exc
        if msg.protocol_version != PROTOCOL_VERSION:
            raise AttestationError(
                AttestationFailure.UNSUPPORTED,
                f"enclave speaks protocol version {msg.protocol_version}, SDK speaks "
                f"{PROTOCOL_VERSION}",
            )
        keys: dict[Suite, bytes] = {}
        for k in msg.keys:
            try:
                suite = Suite(k.suite)
            except ValueError:
                continue  # a suite this SDK doesn't know; it can still use the others
            try:
                decode_public_key(suite, k.public_key)
            except ProtocolError as exc:
                raise AttestationError(AttestationFailure.MALFORMED, str(exc)) from exc
            keys[suite] = bytes(k.public_key)
        if not keys:
            raise AttestationError(
                AttestationFailure.UNSUPPORTED, "enclave offers no sealing suite this SDK knows"
            )
        if msg.expires_at_ms <= msg.issued_at_ms:
            raise AttestationError(AttestationFailure.MALFORMED, "claims expire before issue")
        return cls(
            raw=bytes(raw),
            key_id=msg.key_id,
            keys=MappingProxyType(keys),
            issued_at=from_ms(msg.issued_at_ms),
            expires_at=from_ms(msg.expires_at_ms),
            measurement_hex=msg.measurement_hex,
            audit_log_key=bytes(msg.audit_log_key),
            audit_log_origin=msg.audit_log_origin,
            manifest_sha256=bytes(msg.manifest_sha256),
        )


@dataclass(frozen=True)
class Evidence:
    """Attestation evidence as the enclave returned it (not yet verified)."""

    tee: str
    report: bytes
    cert_chain: tuple[bytes, ...]
    claims: bytes
    gpus: tuple[tuple[bytes, bytes], ...] = ()  # (SPDM evidence, PEM chain) per GPU
    collateral: Mapping[str, bytes] = field(default_factory=dict)  # TDX: Intel PCS collateral

    @classmethod
    def from_proto(cls, msg: attestation_pb2.AttestationEvidence) -> Evidence:
        return cls(
            tee=msg.tee,
            report=bytes(msg.report),
            cert_chain=tuple(bytes(c) for c in msg.cert_chain),
            claims=bytes(msg.claims),
            gpus=tuple((bytes(g.spdm), bytes(g.cert_chain_pem)) for g in msg.gpus),
            collateral=MappingProxyType({k: bytes(v) for k, v in msg.collateral.items()}),
        )

    def to_proto(self) -> attestation_pb2.AttestationEvidence:
        return attestation_pb2.AttestationEvidence(
            tee=self.tee,
            report=self.report,
            cert_chain=list(self.cert_chain),
            claims=self.claims,
            gpus=[
                attestation_pb2.GpuEvidence(spdm=spdm, cert_chain_pem=chain)
                for spdm, chain in self.gpus
            ],
            collateral=dict(self.collateral),
        )


@dataclass(frozen=True)
class AttestedEnclave:
    """A verified enclave: its hardware report, its claims, and how long the verdict holds."""

    report: VerifiedSnpReport | VerifiedTdxQuote
    claims: EnclaveClaims
    claims_digest: bytes
    evidence: Evidence
    valid_until: datetime
    nonce: bytes

    gpu: VerifiedComposite | None = None

    @property
    def tee(self) -> str:
        return self.evidence.tee

    @property
    def measurement(self) -> str:
        """SEV-SNP MEASUREMENT or TDX MRTD, hex."""
        if isinstance(self.report, VerifiedSnpReport):
            return self.report.measurement.hex()
        return self.report.mr_td.hex()

    @property
    def insecure_root(self) -> bool:
        """Whether the hardware report verified under a test root (SNP or TDX), not a vendor's."""
        return self.report.insecure_root

    @property
    def key_id(self) -> str:
        return self.claims.key_id

    def public_key(self, suite: Suite) -> PublicKey:
        if suite not in self.claims.keys:
            raise AttestationError(
                AttestationFailure.UNSUPPORTED, f"enclave does not offer suite {suite.name}"
            )
        return decode_public_key(suite, self.claims.keys[suite])

    def is_valid_at(self, now: datetime) -> bool:
        return now < self.valid_until

    @functools.cached_property
    def log_verifier(self) -> Verifier | None:
        """The audit log's verifier key, bound into this attestation (None: no audit log).

        Built once per attestation (every sealed call verifies its receipt with it); a bad key
        is not cached and raises each time.
        """
        if not self.claims.audit_log_key:
            return None
        try:
            return Verifier.from_public_key(self.claims.audit_log_origin, self.claims.audit_log_key)
        except AuditLogError as exc:
            raise AttestationError(
                AttestationFailure.MALFORMED, f"enclave claims carry a bad audit log key: {exc}"
            ) from exc


def verify_enclave(
    evidence: Evidence,
    *,
    nonce: bytes,
    policy: AttestationPolicy,
    now: datetime,
    challenge_issued_at: datetime | None = None,
    require_unexpired: bool = True,
) -> AttestedEnclave:
    """Verify evidence answering ``nonce``: hardware report, chain, policy, claims binding.

    ``require_unexpired=False`` is for saved evidence (an audit export): the hardware report and
    its binding must still verify, but the key epoch may have ended since.
    """
    if len(nonce) != NONCE_LEN:
        raise ConfigError(f"nonce must be {NONCE_LEN} bytes, not {len(nonce)}")
    digest = claims_digest(evidence.claims)
    bound = report_data_for(nonce, digest)
    verified: VerifiedSnpReport | VerifiedTdxQuote
    if evidence.tee == "sev-snp":
        if not evidence.cert_chain:
            raise AttestationError(AttestationFailure.BAD_CHAIN, "evidence carries no certificates")
        certs = [c for blob in evidence.cert_chain for c in load_certificates(blob)]
        verified = verify_snp_report(
            evidence.report,
            SnpCertChain.from_certificates(certs),
            policy,
            now=now,
            expected_report_data=bound,
            challenge_issued_at=challenge_issued_at if challenge_issued_at is not None else now,
        )
    elif evidence.tee == "tdx":
        verified = _verify_tdx(evidence, policy, bound, now)
    else:
        raise AttestationError(AttestationFailure.UNSUPPORTED, f"unsupported TEE {evidence.tee!r}")
    gpu = _verify_gpus(evidence, policy, verified, now)
    claims = EnclaveClaims.from_bytes(evidence.claims)
    measured = verified.measurement if isinstance(verified, VerifiedSnpReport) else verified.mr_td
    if claims.measurement_hex and not hmac.compare_digest(
        claims.measurement_hex.encode(), measured.hex().encode()
    ):
        raise AttestationError(
            AttestationFailure.MEASUREMENT_MISMATCH,
            "claimed measurement differs from the hardware report's",
        )
    if require_unexpired and now >= claims.expires_at:
        raise AttestationError(
            AttestationFailure.EXPIRED,
            f"enclave key epoch expired at {claims.expires_at.isoformat()}",
        )
    valid_until = min(now + policy.max_evidence_age, claims.expires_at)
    return AttestedEnclave(
        report=verified,
        claims=claims,
        claims_digest=digest,
        evidence=evidence,
        valid_until=valid_until,
        nonce=nonce,
        gpu=gpu,
    )


def _verify_tdx(
    evidence: Evidence, policy: AttestationPolicy, bound: bytes, now: datetime
) -> VerifiedTdxQuote:
    """An Intel TDX quote, with the collateral the enclave forwarded (Intel-signed)."""
    if policy.tdx is None:
        raise AttestationError(
            AttestationFailure.POLICY, "the policy does not accept Intel TDX enclaves"
        )
    if not evidence.collateral:
        raise AttestationError(
            AttestationFailure.POLICY,
            "missing collateral: the enclave sent no Intel PCS collateral",
        )
    collateral = TdxCollateral.from_files(evidence.collateral.items())
    return verify_tdx_quote(
        evidence.report, collateral, replace(policy.tdx, report_data=bound), now=now
    )


def _verify_gpus(
    evidence: Evidence,
    policy: AttestationPolicy,
    cpu: VerifiedSnpReport | VerifiedTdxQuote,
    now: datetime,
) -> VerifiedComposite | None:
    """GPUs are accepted only bound to the verified CPU TEE's REPORT_DATA, in one verdict."""
    requirement = policy.gpu
    if not evidence.gpus:
        if requirement is not None and requirement.required:
            raise AttestationError(
                AttestationFailure.POLICY, "the policy requires a confidential GPU; none presented"
            )
        return None
    if requirement is None:
        raise AttestationError(
            AttestationFailure.POLICY,
            "the enclave presents GPU evidence but the policy has no GPU reference values",
        )
    parsed = [(SpdmEvidence.from_bytes(spdm), chain) for spdm, chain in evidence.gpus]
    rim_ids = sorted({rim_id for ev, _ in parsed for rim_id in ev.rim_ids})
    rims = [
        verify_rim(requirement.rim_store.get(rim_id), now=now, root=requirement.rim_root)
        for rim_id in rim_ids
    ]
    return verify_composite(
        cpu,
        parsed,
        rims=rims,
        now=now,
        device_root=requirement.device_root,
        revocation=requirement.revocation,
    )
