"""Verify NVIDIA GPU / NVSwitch SPDM evidence offline: chain, signature, nonce, RIM golden values.

signature   leaf of the device certificate chain (pinned root) signs request ‖ response
            (ECDSA P-384 / SHA-384, raw r ‖ s)
nonce       the request nonce must equal the caller's fresh nonce (STALE_NONCE otherwise)
measurements every active golden value of the given verified RIMs (RIM index i is SPDM
            block i + 1) must match; a mismatch lists EVERY mismatching index
revocation  optional ``RevocationSource`` (OCSP behind a Protocol; offline cache provided)
"""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509 import ocsp

from veil.sdk.attestation.nvidia._rim import VerifiedRim
from veil.sdk.attestation.nvidia._roots import nvidia_device_root
from veil.sdk.attestation.nvidia._spdm import SpdmEvidence
from veil.sdk.attestation.tdx._x509 import load_certificates, verify_chain
from veil.sdk.errors import AttestationError, AttestationFailure, ConfigError, warn_insecure

__all__ = [
    "OfflineOcspCache",
    "RevocationSource",
    "VerifiedGpuEvidence",
    "VerifiedSpdmSignature",
    "verify_gpu_evidence",
    "verify_spdm_signature",
]


class RevocationSource(Protocol):
    """Tells whether ``cert`` (issued by ``issuer``) is revoked at ``now``; raises if so."""

    def check(self, cert: x509.Certificate, issuer: x509.Certificate, now: datetime) -> None: ...


def _is_ocsp_delegate(cert: x509.Certificate, issuer: x509.Certificate, now: datetime) -> bool:
    """A delegated responder: issued by ``issuer``, current, with the OCSPSigning key usage."""
    try:
        cert.verify_directly_issued_by(issuer)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    current = cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    return current and x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING in eku


class OfflineOcspCache:
    """Pre-fetched DER OCSP responses keyed by certificate serial number; verified on use.

    A certificate with no cached response fails closed (POLICY, "missing collateral").
    """

    def __init__(self, responses: Mapping[int, bytes]) -> None:
        self._responses = dict(responses)

    def check(self, cert: x509.Certificate, issuer: x509.Certificate, now: datetime) -> None:
        raw = self._responses.get(cert.serial_number)
        name = cert.subject.rfc4514_string()
        if raw is None:
            raise AttestationError(
                AttestationFailure.POLICY, f"missing collateral: no OCSP response for '{name}'"
            )
        try:
            resp = ocsp.load_der_ocsp_response(raw)
        except ValueError as exc:
            raise AttestationError(
                AttestationFailure.MALFORMED, f"OCSP response for '{name}' does not parse"
            ) from exc
        if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise AttestationError(
                AttestationFailure.POLICY, f"OCSP response for '{name}' is not successful"
            )
        signer = issuer
        for delegated in resp.certificates:
            if _is_ocsp_delegate(delegated, issuer, now):
                signer = delegated
        key = signer.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or resp.signature_hash_algorithm is None:
            raise AttestationError(
                AttestationFailure.BAD_SIGNATURE, f"OCSP response for '{name}' has no EC signer"
            )
        try:
            key.verify(
                resp.signature, resp.tbs_response_bytes, ec.ECDSA(resp.signature_hash_algorithm)
            )
        except InvalidSignature as exc:
            raise AttestationError(
                AttestationFailure.BAD_SIGNATURE, f"OCSP response for '{name}' is not signed"
            ) from exc
        single = next((r for r in resp.responses if r.serial_number == cert.serial_number), None)
        if single is None:
            raise AttestationError(
                AttestationFailure.POLICY, f"OCSP response does not cover '{name}'"
            )
        nxt = single.next_update_utc
        if now < single.this_update_utc or (nxt is not None and now > nxt):
            raise AttestationError(
                AttestationFailure.EXPIRED, f"OCSP response for '{name}' is not current"
            )
        if single.certificate_status is not ocsp.OCSPCertStatus.GOOD:
            raise AttestationError(
                AttestationFailure.REVOKED,
                f"'{name}' is {single.certificate_status.name.lower()} per OCSP",
            )


@dataclass(frozen=True)
class VerifiedSpdmSignature:
    """Proven: this evidence was signed by a device whose chain reaches the pinned root."""

    evidence: SpdmEvidence
    device_certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]


def _chain(cert_chain: bytes | Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    if isinstance(cert_chain, bytes | bytearray):
        return load_certificates(bytes(cert_chain), "device certificate chain")
    return tuple(cert_chain)


def verify_spdm_signature(
    evidence: SpdmEvidence | bytes,
    cert_chain: bytes | Sequence[x509.Certificate],
    *,
    now: datetime,
    root: x509.Certificate | None = None,
    revocation: RevocationSource | None = None,
) -> VerifiedSpdmSignature:
    """Check the chain (leaf first) to the pinned root and the evidence signature by the leaf.

    ``root`` defaults to NVIDIA's device root (package data); any other root warns every time.
    """
    if not isinstance(evidence, SpdmEvidence):
        evidence = SpdmEvidence.from_bytes(evidence)
    certs = _chain(cert_chain)
    pinned = nvidia_device_root()
    if root is not None and root != pinned:
        warn_insecure("GPU verification trusts a root that is not NVIDIA's device root")
        pinned = root
    leaf = certs[0]
    path = verify_chain(leaf, certs[1:], [pinned], now, "device certificate chain")
    if revocation is not None:
        for cert, issuer in itertools.pairwise(path):
            revocation.check(cert, issuer, now)
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise AttestationError(
            AttestationFailure.BAD_CHAIN, "device certificate key is not ECDSA P-384"
        )
    sig = encode_dss_signature(
        int.from_bytes(evidence.signature[:48], "big"),
        int.from_bytes(evidence.signature[48:], "big"),
    )
    try:
        key.verify(sig, evidence.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise AttestationError(
            AttestationFailure.BAD_SIGNATURE,
            "SPDM measurement signature does not verify under the device certificate",
        ) from exc
    return VerifiedSpdmSignature(evidence=evidence, device_certificate=leaf, chain=path)


@dataclass(frozen=True)
class VerifiedGpuEvidence:
    """What verified GPU evidence proves."""

    nonce: bytes
    measurements: tuple[tuple[int, bytes], ...]
    driver_version: str | None
    vbios_version: str | None
    device_certificate_sha256: bytes
    rim_ids: tuple[str, ...]
    revocation_checked: bool
    verified_at: datetime


def _golden(rims: Sequence[VerifiedRim]) -> dict[int, tuple[bytes, ...]]:
    out: dict[int, tuple[bytes, ...]] = {}
    for rim in rims:
        for m in rim.measurements:
            if m.index in out:
                raise AttestationError(
                    AttestationFailure.POLICY,
                    f"RIMs conflict: measurement index {m.index} is active in more than one",
                )
            out[m.index] = m.alternatives
    return out


def verify_gpu_evidence(
    evidence: SpdmEvidence | bytes,
    cert_chain: bytes | Sequence[x509.Certificate],
    *,
    nonce: bytes,
    rims: Sequence[VerifiedRim],
    now: datetime,
    root: x509.Certificate | None = None,
    revocation: RevocationSource | None = None,
) -> VerifiedGpuEvidence:
    """Verify signature, chain, nonce and every golden measurement of ``rims``."""
    if not rims:
        raise ConfigError("verify_gpu_evidence needs at least one verified RIM")
    proven = verify_spdm_signature(evidence, cert_chain, now=now, root=root, revocation=revocation)
    ev = proven.evidence
    if len(nonce) != 32 or not hmac.compare_digest(ev.nonce, nonce):
        raise AttestationError(
            AttestationFailure.STALE_NONCE, "GPU evidence was not made for the expected nonce"
        )
    measured = ev.measurements()
    mismatched: list[int] = []
    for index, alternatives in sorted(_golden(rims).items()):
        value = measured.get(index + 1)
        if value is None or value not in alternatives:
            mismatched.append(index)
    if mismatched:
        raise AttestationError(
            AttestationFailure.MEASUREMENT_MISMATCH,
            f"{len(mismatched)} GPU measurement(s) differ from the RIMs at index "
            f"{', '.join(str(i) for i in mismatched)} (RIM version "
            f"{', '.join(r.colloquial_version or '?' for r in rims)}; evidence reports driver "
            f"{ev.driver_version or '?'}, VBIOS {ev.vbios_version or '?'})",
        )
    der = proven.device_certificate.public_bytes(serialization.Encoding.DER)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return VerifiedGpuEvidence(
        nonce=ev.nonce,
        measurements=tuple(sorted(measured.items())),
        driver_version=ev.driver_version,
        vbios_version=ev.vbios_version,
        device_certificate_sha256=digest.finalize(),
        rim_ids=tuple(r.tag_id for r in rims),
        revocation_checked=revocation is not None,
        verified_at=now,
    )
