"""SEV-SNP evidence verification: one code path for real AMD hardware and the simulated TEE.

Steps, in order; the first failure raises ``AttestationError`` and nothing after it runs:

1. parse the 1184-byte report;
2. chain: ASK issued by a *pinned* ARK (RSASSA-PSS/SHA-384), VCEK issued by that ASK; every
   certificate valid at ``now``; a root in the evidence itself is never trusted on its own;
3. report signature: ECDSA P-384/SHA-384 by the VCEK over bytes 0x000..0x29F;
4. VCEK extensions agree with the report: product, hwID == CHIP_ID, TCB SPLs == REPORTED_TCB;
5. policy: debug forbidden, expected measurement, minimum TCB, VMPL, REPORT_DATA binding,
   evidence age.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from veil.sdk.attestation._policy import AttestationPolicy
from veil.sdk.attestation._roots import TrustRoot, load_certificates
from veil.sdk.attestation.der import decode_ia5, decode_integer, decode_octets
from veil.sdk.attestation.snp_report import (
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    Product,
    SnpReport,
    TcbVersion,
)
from veil.sdk.errors import AttestationError, AttestationFailure, warn_insecure

__all__ = ["SnpCertChain", "VerifiedSnpReport", "verify_snp_report"]

_AMD = "1.3.6.1.4.1.3704.1."
OID_STRUCT_VERSION = _AMD + "1"
OID_PRODUCT_NAME = _AMD + "2"
OID_BL_SPL = _AMD + "3.1"
OID_TEE_SPL = _AMD + "3.2"
OID_SNP_SPL = _AMD + "3.3"
OID_UCODE_SPL = _AMD + "3.8"
OID_FMC_SPL = _AMD + "3.9"
OID_HWID = _AMD + "4"
OID_CSP_ID = _AMD + "5"

FUTURE_SKEW = timedelta(seconds=30)


def _fail(reason: AttestationFailure, message: str) -> AttestationError:
    return AttestationError(reason, message)


@dataclass(frozen=True)
class SnpCertChain:
    """The certificates that come with a report: VCEK, and optionally ASK and ARK."""

    vcek: x509.Certificate
    ask: x509.Certificate | None = None
    ark: x509.Certificate | None = None

    @classmethod
    def from_certificates(cls, certs: Sequence[x509.Certificate]) -> SnpCertChain:
        """Sort a bag of certificates by structure: the self-signed one is the ARK, the one
        that issued another is the ASK, and the EC P-384 leaf is the VCEK."""
        ark = next((c for c in certs if c.subject == c.issuer), None)
        vcek = next(
            (c for c in certs if isinstance(c.public_key(), ec.EllipticCurvePublicKey)), None
        )
        if vcek is None:
            raise _fail(AttestationFailure.BAD_CHAIN, "no VCEK (EC P-384 leaf) in the chain")
        ask = next((c for c in certs if c is not ark and c is not vcek), None)
        return cls(vcek=vcek, ask=ask, ark=ark)

    @classmethod
    def from_pem(cls, *blobs: bytes) -> SnpCertChain:
        """From PEM or DER blobs: a bundle of VCEK, ASK, ARK, or a VCEK plus an ASK/ARK chain."""
        certs: list[x509.Certificate] = []
        for blob in blobs:
            certs.extend(load_certificates(blob))
        return cls.from_certificates(certs)

    def to_der(self) -> list[bytes]:
        return [
            c.public_bytes(serialization.Encoding.DER)
            for c in (self.vcek, self.ask, self.ark)
            if c is not None
        ]


@dataclass(frozen=True)
class VerifiedSnpReport:
    """What a verified SEV-SNP report proves. Only built by :func:`verify_snp_report`."""

    product: Product
    measurement: bytes
    report_data: bytes
    host_data: bytes
    chip_id: bytes
    reported_tcb: TcbVersion
    vmpl: int
    policy: int
    version: int
    root_fingerprint: str
    insecure_root: bool
    verified_at: datetime

    @property
    def tee(self) -> str:
        return "sev-snp"


def _issued_by(child: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise _fail(AttestationFailure.BAD_CHAIN, f"{what}: {exc or 'signature invalid'}") from exc


def _check_validity(cert: x509.Certificate, what: str, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise _fail(
            AttestationFailure.CERT_EXPIRED,
            f"{what} certificate is not valid before {cert.not_valid_before_utc.isoformat()}",
        )
    if now > cert.not_valid_after_utc:
        raise _fail(
            AttestationFailure.CERT_EXPIRED,
            f"{what} certificate expired at {cert.not_valid_after_utc.isoformat()}",
        )


def _same_cert(a: x509.Certificate, b: x509.Certificate) -> bool:
    der = serialization.Encoding.DER
    return hmac.compare_digest(a.public_bytes(der), b.public_bytes(der))


def _select_root(
    chain: SnpCertChain, roots: Sequence[TrustRoot]
) -> tuple[TrustRoot, x509.Certificate]:
    """Find the pinned root that issued the chain's ASK (or the root's own ASK)."""
    for root in roots:
        candidates = [c for c in (chain.ask, root.ask) if c is not None]
        for ask in candidates:
            if ask.issuer != root.ark.subject:
                continue
            try:
                ask.verify_directly_issued_by(root.ark)
            except (InvalidSignature, ValueError, TypeError):
                continue
            try:
                chain.vcek.verify_directly_issued_by(ask)
            except (InvalidSignature, ValueError, TypeError):
                continue
            if chain.ark is not None and not _same_cert(chain.ark, root.ark):
                raise _fail(
                    AttestationFailure.UNTRUSTED_ROOT,
                    "the chain's ARK differs from the pinned root that signed its ASK",
                )
            return root, ask
    if chain.ask is None:
        raise _fail(
            AttestationFailure.UNTRUSTED_ROOT, "VCEK does not chain to any pinned root's ASK"
        )
    raise _fail(
        AttestationFailure.UNTRUSTED_ROOT,
        f"chain (ASK {chain.ask.subject.rfc4514_string()}) does not lead to a pinned ARK",
    )


def _extensions(cert: x509.Certificate) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for ext in cert.extensions:
        value = ext.value
        if isinstance(value, x509.UnrecognizedExtension):
            out[ext.oid.dotted_string] = value.value
    return out


def _check_vcek_extensions(
    vcek: x509.Certificate, report: SnpReport, product: Product
) -> TcbVersion:
    ext = _extensions(vcek)
    if OID_CSP_ID in ext:
        raise _fail(AttestationFailure.UNSUPPORTED, "VLEK-signed reports are not supported")
    name = ext.get(OID_PRODUCT_NAME)
    if name is not None:
        named = Product.from_name(decode_ia5(name, "productName"))
        if named is not product:
            raise _fail(
                AttestationFailure.CERT_MISMATCH,
                f"VCEK is for {named.value}, but its chain is {product.value}'s",
            )
    hwid_raw = ext.get(OID_HWID)
    if hwid_raw is None:
        raise _fail(AttestationFailure.CERT_MISMATCH, "VCEK has no hwID extension")
    hwid = decode_octets(hwid_raw, "hwID", product.chip_id_len)
    if not report.chip_id_masked and not hmac.compare_digest(hwid, report.chip_id[: len(hwid)]):
        raise _fail(AttestationFailure.CERT_MISMATCH, "VCEK hwID does not match the CHIP_ID")

    def spl(oid: str, what: str) -> int:
        if oid not in ext:
            raise _fail(AttestationFailure.CERT_MISMATCH, f"VCEK has no {what} extension")
        return decode_integer(ext[oid], what)

    tcb = report.reported_tcb(product)
    cert_tcb = TcbVersion(
        bootloader=spl(OID_BL_SPL, "blSPL"),
        tee=spl(OID_TEE_SPL, "teeSPL"),
        snp=spl(OID_SNP_SPL, "snpSPL"),
        microcode=spl(OID_UCODE_SPL, "ucodeSPL"),
        fmc=spl(OID_FMC_SPL, "fmcSPL") if product is Product.TURIN else 0,
    )
    if cert_tcb != tcb:
        raise _fail(
            AttestationFailure.CERT_MISMATCH,
            f"REPORTED_TCB ({tcb}) differs from the VCEK's TCB ({cert_tcb})",
        )
    return tcb


def _check_signature(vcek: x509.Certificate, report: SnpReport) -> None:
    if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise _fail(
            AttestationFailure.MALFORMED,
            f"unsupported signature algorithm {report.signature_algo}",
        )
    if report.signing_key != 0:
        raise _fail(
            AttestationFailure.UNSUPPORTED,
            f"report signed by key type {report.signing_key}; only VCEK-signed reports are "
            "supported",
        )
    key = vcek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise _fail(AttestationFailure.BAD_CHAIN, "VCEK key is not ECDSA P-384")
    signature = encode_dss_signature(report.signature_r, report.signature_s)
    try:
        key.verify(signature, report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise _fail(
            AttestationFailure.BAD_SIGNATURE, "report signature does not verify under the VCEK"
        ) from exc


def _check_policy(
    report: SnpReport,
    tcb: TcbVersion,
    policy: AttestationPolicy,
    *,
    now: datetime,
    expected_report_data: bytes | None,
    challenge_issued_at: datetime | None,
) -> None:
    if report.debug_allowed and not policy.allow_debug:
        raise _fail(
            AttestationFailure.DEBUG_ENCLAVE,
            "guest policy allows debugging (bit 19): the host can read its memory",
        )
    if policy.expected_measurements and report.measurement not in policy.expected_measurements:
        raise _fail(
            AttestationFailure.MEASUREMENT_MISMATCH,
            f"measurement {report.measurement.hex()} is not an expected one",
        )
    if policy.min_tcb is not None and not tcb.meets(policy.min_tcb):
        raise _fail(
            AttestationFailure.TCB_TOO_LOW,
            f"reported TCB ({tcb}) is below the minimum ({policy.min_tcb})",
        )
    if report.vmpl not in policy.allowed_vmpls:
        raise _fail(
            AttestationFailure.VMPL_NOT_ALLOWED,
            f"report is from VMPL {report.vmpl}, allowed: {sorted(policy.allowed_vmpls)}",
        )
    if expected_report_data is not None:
        if not hmac.compare_digest(report.report_data, expected_report_data.ljust(64, b"\0")):
            raise _fail(
                AttestationFailure.UNBOUND_KEY,
                "REPORT_DATA does not commit to this nonce and key",
            )
    elif policy.require_key_binding:
        raise _fail(
            AttestationFailure.UNBOUND_KEY,
            "policy requires REPORT_DATA binding but no expected value was given",
        )
    if challenge_issued_at is not None:
        age = now - challenge_issued_at
        if age > policy.max_evidence_age or age < -FUTURE_SKEW:
            raise _fail(
                AttestationFailure.STALE_NONCE,
                f"evidence answers a challenge issued {age.total_seconds():.0f} s ago "
                f"(max {policy.max_evidence_age.total_seconds():.0f} s)",
            )


def verify_snp_report(
    report: bytes | SnpReport,
    chain: SnpCertChain,
    policy: AttestationPolicy,
    *,
    now: datetime,
    expected_report_data: bytes | None = None,
    challenge_issued_at: datetime | None = None,
) -> VerifiedSnpReport:
    """Verify SEV-SNP evidence against ``policy`` at time ``now``; raise or return what it proves.

    ``expected_report_data`` is what REPORT_DATA must hold (64 bytes; shorter values are
    zero-padded), e.g. :func:`veil.sdk.attestation.report_data_for`. ``challenge_issued_at`` is when
    the nonce was made; evidence older than ``policy.max_evidence_age`` is stale.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    parsed = report if isinstance(report, SnpReport) else SnpReport.from_bytes(report)
    root, ask = _select_root(chain, policy.roots)
    if root.insecure:
        warn_insecure(
            "trusting a test root for SEV-SNP evidence "
            f"(ARK {root.ark.subject.rfc4514_string()}, sha256 {root.fingerprint[:16]}…): "
            "this enclave is NOT proven to run on AMD hardware"
        )
    for cert, what in ((root.ark, "ARK"), (ask, "ASK"), (chain.vcek, "VCEK")):
        _check_validity(cert, what, now)
    product = root.product
    if product is None:
        ext = _extensions(chain.vcek)
        name = ext.get(OID_PRODUCT_NAME)
        if name is None:
            raise _fail(AttestationFailure.CERT_MISMATCH, "VCEK has no productName extension")
        product = Product.from_name(decode_ia5(name, "productName"))
    _check_signature(chain.vcek, parsed)
    tcb = _check_vcek_extensions(chain.vcek, parsed, product)
    _check_policy(
        parsed,
        tcb,
        policy,
        now=now,
        expected_report_data=expected_report_data,
        challenge_issued_at=challenge_issued_at,
    )
    return VerifiedSnpReport(
        product=product,
        measurement=parsed.measurement,
        report_data=parsed.report_data,
        host_data=parsed.host_data,
        chip_id=parsed.chip_id,
        reported_tcb=tcb,
        vmpl=parsed.vmpl,
        policy=parsed.policy,
        version=parsed.version,
        root_fingerprint=root.fingerprint,
        insecure_root=root.insecure,
        verified_at=now,
    )
