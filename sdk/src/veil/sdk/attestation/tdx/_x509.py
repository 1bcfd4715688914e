"""Certificates, chains and CRLs for Intel's PKI, converted to ``AttestationError`` at the edge.

Chains are built from the leaf to a *pinned* root: a chain file's own root is never trusted on
its own, it must be byte-identical (same public key and subject) to one of the pinned roots.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from veil.sdk.errors import AttestationError, AttestationFailure

__all__ = [
    "check_not_revoked",
    "load_certificates",
    "load_crl",
    "verify_chain",
    "verify_crl",
]

_PEM_MARKER = b"-----BEGIN CERTIFICATE-----"


def _split_der(data: bytes) -> list[bytes]:
    """Split concatenated DER SEQUENCEs (certificate chains shipped as raw DER)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        if data[pos:].strip(b"\x00") == b"":
            break
        if data[pos] != 0x30 or pos + 2 > len(data):
            raise AttestationError(
                AttestationFailure.MALFORMED, f"certificate chain has a non-DER byte at {pos}"
            )
        first = data[pos + 1]
        if first < 0x80:
            length, hdr = first, 2
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or pos + 2 + n > len(data):
                raise AttestationError(
                    AttestationFailure.MALFORMED, f"certificate chain has a bad length at {pos}"
                )
            length, hdr = int.from_bytes(data[pos + 2 : pos + 2 + n], "big"), 2 + n
        end = pos + hdr + length
        if end > len(data):
            raise AttestationError(
                AttestationFailure.MALFORMED,
                f"certificate chain is {len(data)} bytes, a certificate at {pos} needs {end}",
            )
        out.append(data[pos:end])
        pos = end
    return out


def load_certificates(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    """Load PEM, URL-encoded PEM (PCS issuer-chain headers) or concatenated DER certificates."""
    try:
        if b"%20CERTIFICATE" in data or b"-----BEGIN%20" in data:
            data = urllib.parse.unquote_to_bytes(data)
        if _PEM_MARKER in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(d) for d in _split_der(data)]
    except AttestationError:
        raise
    except ValueError as exc:
        raise AttestationError(
            AttestationFailure.MALFORMED, f"{what}: not a well-formed X.509 certificate"
        ) from exc
    if not certs:
        raise AttestationError(AttestationFailure.MALFORMED, f"{what}: no certificate found")
    return tuple(certs)


def load_crl(data: bytes, what: str) -> x509.CertificateRevocationList:
    """Load a CRL in DER, PEM, or hex-encoded DER (as the PCS API can return)."""
    try:
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        stripped = data.strip()
        if stripped and all(c in b"0123456789abcdefABCDEF" for c in stripped):
            return x509.load_der_x509_crl(bytes.fromhex(stripped.decode()))
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise AttestationError(
            AttestationFailure.MALFORMED, f"{what}: not a well-formed X.509 CRL"
        ) from exc


def _same_cert(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.public_bytes(serialization.Encoding.DER) == b.public_bytes(serialization.Encoding.DER)


def _check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise AttestationError(
            AttestationFailure.CERT_EXPIRED,
            f"{what}: certificate '{cert.subject.rfc4514_string()}' is valid "
            f"{cert.not_valid_before_utc.isoformat()}..{cert.not_valid_after_utc.isoformat()}, "
            f"not at {now.isoformat()}",
        )


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca)


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Iterable[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: datetime,
    what: str,
) -> tuple[x509.Certificate, ...]:
    """Return the path leaf → … → pinned root, or raise (BAD_CHAIN / UNTRUSTED_ROOT / expiry).

    Every certificate on the path must be valid at ``now``; every issuer must be a CA.
    """
    pool = [c for c in intermediates if not _same_cert(c, leaf)]
    path = [leaf]
    current = leaf
    for _ in range(8):
        _check_validity(current, now, what)
        for root in roots:
            if _issued_by(current, root) or _same_cert(current, root):
                if not _same_cert(current, root):
                    _check_validity(root, now, what)
                    path.append(root)
                return tuple(path)
        nxt = next(
            (c for c in pool if _is_ca(c) and c not in path and _issued_by(current, c)), None
        )
        if nxt is None:
            top = current.issuer.rfc4514_string()
            if current.issuer == current.subject and _issued_by(current, current):
                raise AttestationError(
                    AttestationFailure.UNTRUSTED_ROOT,
                    f"{what}: chain ends at self-signed '{top}', which is not a pinned root",
                )
            if any(c.subject == current.issuer for c in pool) or any(
                r.subject == current.issuer for r in roots
            ):
                raise AttestationError(
                    AttestationFailure.BAD_CHAIN,
                    f"{what}: signature on '{current.subject.rfc4514_string()}' does not verify "
                    f"under its issuer '{top}'",
                )
            raise AttestationError(
                AttestationFailure.UNTRUSTED_ROOT,
                f"{what}: chain ends at '{top}', which is not a pinned root",
            )
        path.append(nxt)
        current = nxt
    raise AttestationError(AttestationFailure.BAD_CHAIN, f"{what}: chain is too long")


def verify_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    now: datetime,
    what: str,
) -> None:
    """Check a CRL's signature by ``issuer`` and its thisUpdate..nextUpdate window."""
    key = issuer.public_key()
    if crl.issuer != issuer.subject or not isinstance(key, ec.EllipticCurvePublicKey):
        raise AttestationError(
            AttestationFailure.BAD_CHAIN,
            f"{what}: CRL issuer '{crl.issuer.rfc4514_string()}' is not "
            f"'{issuer.subject.rfc4514_string()}'",
        )
    if not crl.is_signature_valid(key):
        raise AttestationError(
            AttestationFailure.BAD_SIGNATURE,
            f"{what}: CRL signature does not verify under '{issuer.subject.rfc4514_string()}'",
        )
    next_update = crl.next_update_utc
    if now < crl.last_update_utc or next_update is None or now > next_update:
        raise AttestationError(
            AttestationFailure.EXPIRED,
            f"{what}: CRL is valid {crl.last_update_utc.isoformat()}.."
            f"{next_update.isoformat() if next_update else 'never'}, not at {now.isoformat()}",
        )


def check_not_revoked(
    cert: x509.Certificate, crl: x509.CertificateRevocationList, what: str
) -> None:
    """Raise REVOKED if ``cert``'s serial number is on ``crl`` (signature checked elsewhere)."""
    if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        raise AttestationError(
            AttestationFailure.REVOKED,
            f"{what}: certificate '{cert.subject.rfc4514_string()}' serial "
            f"{cert.serial_number:#x} is revoked by '{crl.issuer.rfc4514_string()}'",
        )
