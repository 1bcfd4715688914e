"""What a TDX quote must satisfy to be accepted (frozen; insecure choices are named)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from veil.sdk.attestation.tdx._collateral import TcbStatus
from veil.sdk.attestation.tdx._x509 import load_certificates
from veil.sdk.errors import ConfigError

__all__ = ["TdxPolicy", "intel_sgx_root_ca"]


@functools.cache
def intel_sgx_root_ca() -> x509.Certificate:
    """The real Intel SGX Root CA, shipped as package data (never taken from a chain file)."""
    data = resources.files("veil.sdk.attestation.tdx").joinpath("roots/intel_sgx_root_ca.pem")
    return load_certificates(data.read_bytes(), "pinned Intel SGX Root CA")[0]


def is_production_root(cert: x509.Certificate) -> bool:
    der = serialization.Encoding.DER
    return cert.public_bytes(der) == intel_sgx_root_ca().public_bytes(der)


def _allow(values: frozenset[bytes] | None, size: int, name: str) -> None:
    if values is None:
        return
    if not values:
        raise ConfigError(f"TdxPolicy.{name} is an empty allowlist: it would accept nothing")
    for v in values:
        if len(v) != size:
            raise ConfigError(f"TdxPolicy.{name} holds a {len(v)}-byte value, expected {size}")


@dataclass(frozen=True)
class TdxPolicy:
    """Acceptance policy for TDX quotes.

    ``roots`` are the pinned Intel roots: any root other than the real Intel SGX Root CA makes
    every verification emit ``InsecureModeWarning``. Allowlists left ``None`` are not checked;
    an empty allowlist is a configuration error. ``accepted_tcb_statuses`` applies to the
    converged status (platform TCB level, TDX module and QE identity together).
    """

    roots: tuple[x509.Certificate, ...]
    accepted_tcb_statuses: frozenset[TcbStatus] = field(
        default_factory=lambda: frozenset({TcbStatus.UP_TO_DATE})
    )
    mrtd: frozenset[bytes] | None = None
    rtmr0: frozenset[bytes] | None = None
    rtmr1: frozenset[bytes] | None = None
    rtmr2: frozenset[bytes] | None = None
    rtmr3: frozenset[bytes] | None = None
    mrseam: frozenset[bytes] | None = None
    allow_debug: bool = False
    report_data: bytes | None = None
    max_collateral_age: timedelta | None = None

    def __post_init__(self) -> None:
        if not self.roots:
            raise ConfigError("TdxPolicy.roots is empty: pin at least one Intel root")
        if not self.accepted_tcb_statuses:
            raise ConfigError("TdxPolicy.accepted_tcb_statuses is empty: it would accept nothing")
        for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam"):
            _allow(getattr(self, name), 48, name)
        if self.report_data is not None and len(self.report_data) != 64:
            raise ConfigError(
                f"TdxPolicy.report_data is {len(self.report_data)} bytes, expected 64"
            )
        if self.max_collateral_age is not None and self.max_collateral_age <= timedelta(0):
            raise ConfigError("TdxPolicy.max_collateral_age must be positive")

    @classmethod
    def production(cls, **kwargs: object) -> TdxPolicy:
        """Pin the real Intel SGX Root CA (package data); other fields as keywords."""
        return cls(roots=(intel_sgx_root_ca(),), **kwargs)  # type: ignore[arg-type]

    @classmethod
    def with_test_root(cls, root_pem: bytes, **kwargs: object) -> TdxPolicy:
        """Pin a test root (e.g. Intel's QVL sample root). Every verification warns loudly."""
        roots = load_certificates(root_pem, "test root")
        return cls(roots=roots, **kwargs)  # type: ignore[arg-type]

    @property
    def insecure(self) -> bool:
        return not all(is_production_root(r) for r in self.roots)
