"""Attestation policy: what a client demands of an enclave before it sends anything."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from cryptography import x509

from veil.sdk.attestation._roots import TrustRoot, amd_roots
from veil.sdk.attestation.nvidia import RevocationSource, RimStore
from veil.sdk.attestation.snp_report import TcbVersion
from veil.sdk.attestation.tdx import TdxPolicy
from veil.sdk.errors import ConfigError, ConfigFailure

__all__ = ["AttestationPolicy", "GpuRequirement"]


@dataclass(frozen=True)
class GpuRequirement:
    """What a confidential GPU must prove: measurements equal to NVIDIA's signed reference
    values (RIMs, from ``rim_store``), under the pinned device and RIM roots (NVIDIA's by
    default). ``required``: refuse an enclave that presents no GPU."""

    rim_store: RimStore
    required: bool = True
    device_root: x509.Certificate | None = None
    rim_root: x509.Certificate | None = None
    revocation: RevocationSource | None = None


def _measurements(values: Iterable[bytes | str]) -> frozenset[bytes]:
    out = set()
    for v in values:
        try:
            raw = bytes.fromhex(v) if isinstance(v, str) else bytes(v)
        except ValueError as exc:
            raise ConfigError(f"measurement {v!r} is not hex") from exc
        if len(raw) != 48:
            raise ConfigError(f"a SEV-SNP measurement is 48 bytes (96 hex), got {len(raw)} bytes")
        out.add(raw)
    return frozenset(out)


def _read_root(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"trust root file {path} does not exist", reason=ConfigFailure.MISSING_FILE
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"trust root file {path} cannot be read ({exc.strerror or type(exc).__name__})",
            reason=ConfigFailure.UNREADABLE,
        ) from exc


@dataclass(frozen=True)
class AttestationPolicy:
    """What an enclave's SEV-SNP evidence must prove.

    Build one with :meth:`production` (AMD's pinned roots) or :meth:`simulated_for_tests`
    (a test root; every verification under it warns). ``expected_measurements`` empty means
    "any measurement" and is refused by :meth:`production` unless ``allow_any_measurement``.
    """

    roots: tuple[TrustRoot, ...]
    expected_measurements: frozenset[bytes] = frozenset()
    allow_debug: bool = False
    min_tcb: TcbVersion | None = None
    allowed_vmpls: frozenset[int] = frozenset({0, 1, 2, 3})
    max_evidence_age: timedelta = timedelta(minutes=5)
    require_key_binding: bool = True
    tdx: TdxPolicy | None = None  # set to accept Intel TDX enclaves (roots, TCB, MRTD, …)
    gpu: GpuRequirement | None = None  # set to accept (or require) confidential GPUs
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.roots:
            raise ConfigError("an attestation policy needs at least one pinned root")
        if self.max_evidence_age <= timedelta(0):
            raise ConfigError("max_evidence_age must be positive")
        if not self.allowed_vmpls or not self.allowed_vmpls <= {0, 1, 2, 3}:
            raise ConfigError("allowed_vmpls must be a non-empty subset of {0, 1, 2, 3}")

    @classmethod
    def production(
        cls,
        *,
        measurements: Iterable[bytes | str] = (),
        min_tcb: TcbVersion | None = None,
        allowed_vmpls: Iterable[int] = (0, 1, 2, 3),
        max_evidence_age: timedelta = timedelta(minutes=5),
        allow_any_measurement: bool = False,
    ) -> AttestationPolicy:
        """AMD's Milan, Genoa and Turin roots; debug forbidden; measurements pinned."""
        expected = _measurements(measurements)
        if not expected and not allow_any_measurement:
            raise ConfigError(
                "a production policy must pin at least one measurement "
                "(pass allow_any_measurement=True to accept any code)"
            )
        return cls(
            roots=amd_roots(),
            expected_measurements=expected,
            min_tcb=min_tcb,
            allowed_vmpls=frozenset(allowed_vmpls),
            max_evidence_age=max_evidence_age,
        )

    @classmethod
    def simulated_for_tests(
        cls,
        trust_root: bytes | str | Path | TrustRoot,
        *,
        measurements: Iterable[bytes | str] = (),
        max_evidence_age: timedelta = timedelta(minutes=5),
    ) -> AttestationPolicy:
        """Trust a test root (e.g. the simulated TEE's ``simulated-root.pem``). Warns every use."""
        if isinstance(trust_root, TrustRoot):
            root = trust_root
        else:
            pem = _read_root(trust_root) if isinstance(trust_root, (str, Path)) else trust_root
            root = TrustRoot.from_pem(pem, insecure=True)
        return cls(
            roots=(root,),
            expected_measurements=_measurements(measurements),
            max_evidence_age=max_evidence_age,
        )

    @property
    def insecure(self) -> bool:
        return any(r.insecure for r in self.roots)
