"""AMD's pinned roots (ARKs) and ASKs, shipped with the SDK, and explicit test roots."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from functools import cache
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from veil.sdk.attestation.snp_report import Product
from veil.sdk.errors import AttestationError, AttestationFailure

__all__ = ["TrustRoot", "amd_roots", "load_certificates"]


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Load one or more certificates from PEM (a bundle) or a single DER blob.

    AMD's VCEKs all carry serial number 0, which ``cryptography`` warns about on load; the
    warning is expected for these certificates and is silenced here only.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if b"-----BEGIN CERTIFICATE-----" in data:
                return list(x509.load_pem_x509_certificates(data))
            return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:  # cryptography's text quotes its Rust parser: not for people
        kind = "PEM" if b"-----BEGIN CERTIFICATE-----" in data else "DER"
        raise AttestationError(
            AttestationFailure.MALFORMED,
            f"certificate could not be parsed: not a well-formed {kind} X.509 certificate",
        ) from exc


@dataclass(frozen=True)
class TrustRoot:
    """A pinned root of trust: an ARK (self-signed, RSA-PSS) with, optionally, its ASK.

    ``insecure`` marks a root that is not AMD's (the simulated TEE's, a lab's): every
    verification under it emits an ``InsecureModeWarning``.
    """

    ark: x509.Certificate
    ask: x509.Certificate | None = None
    product: Product | None = None
    insecure: bool = False

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the ARK's DER encoding, hex."""
        return hashlib.sha256(self.ark.public_bytes(serialization.Encoding.DER)).hexdigest()

    @classmethod
    def from_pem(cls, pem: bytes, *, insecure: bool = True) -> TrustRoot:
        """A root passed explicitly (e.g. ``simulated-root.pem``): ARK, optionally followed by ASK.

        Roots that are not AMD's built-in ones are insecure by default: trusting one warns.
        """
        certs = load_certificates(pem)
        ark = next((c for c in certs if c.subject == c.issuer), None)
        if ark is None:
            raise AttestationError(
                AttestationFailure.UNTRUSTED_ROOT, "trust root file holds no self-signed root"
            )
        ask = next((c for c in certs if c is not ark and c.issuer == ark.subject), None)
        return cls(ark=ark, ask=ask, product=None, insecure=insecure)


@cache
def amd_roots() -> tuple[TrustRoot, ...]:
    """AMD's production ARKs for Milan, Genoa and Turin, with their ASKs."""
    pkg = resources.files("veil.sdk.attestation") / "roots"
    roots = []
    for product in Product:
        name = product.value.lower()
        ark = load_certificates((pkg / f"ark_{name}.pem").read_bytes())[0]
        ask = load_certificates((pkg / f"ask_{name}.pem").read_bytes())[0]
        roots.append(TrustRoot(ark=ark, ask=ask, product=product, insecure=False))
    return tuple(roots)
