"""Composite CPU + GPU attestation: a GPU is accepted only when bound to a verified CPU TEE.

The GPU's SPDM nonce must be ``gpu_nonce_for(cpu.report_data)``, so the GPU evidence was made for
this very CPU attestation; both verdicts are folded into one ``VerifiedComposite``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography import x509

from veil.sdk.attestation.nvidia import (
    RevocationSource,
    SpdmEvidence,
    VerifiedGpuEvidence,
    VerifiedRim,
    verify_gpu_evidence,
)
from veil.sdk.errors import AttestationError, AttestationFailure

__all__ = [
    "GPU_NONCE_DOMAIN",
    "VerifiedCpu",
    "VerifiedComposite",
    "gpu_nonce_for",
    "verify_composite",
]

GPU_NONCE_DOMAIN = b"veil-gpu-nonce-v1"


class VerifiedCpu(Protocol):
    """Any verified CPU TEE result (SEV-SNP, TDX) exposing the REPORT_DATA it proved."""

    @property
    def report_data(self) -> bytes: ...


def gpu_nonce_for(cpu_report_data: bytes) -> bytes:
    """The 32-byte GPU nonce bound to a CPU report: SHA-256(domain ‖ REPORT_DATA)."""
    return hashlib.sha256(GPU_NONCE_DOMAIN + bytes(cpu_report_data)).digest()


@dataclass(frozen=True)
class VerifiedComposite:
    """One verdict: the verified CPU result and the GPUs proven bound to it."""

    cpu: VerifiedCpu
    gpus: tuple[VerifiedGpuEvidence, ...]
    gpu_nonce: bytes
    verified_at: datetime


def verify_composite(
    cpu: VerifiedCpu,
    gpu_evidence: Sequence[tuple[SpdmEvidence | bytes, bytes | Sequence[x509.Certificate]]],
    *,
    rims: Sequence[VerifiedRim],
    now: datetime,
    device_root: x509.Certificate | None = None,
    revocation: RevocationSource | None = None,
) -> VerifiedComposite:
    """Verify every ``(evidence, chain)`` against ``rims`` with the nonce bound to ``cpu``."""
    report_data = getattr(cpu, "report_data", None)
    if not isinstance(report_data, bytes) or not report_data:
        raise AttestationError(
            AttestationFailure.UNBOUND_KEY, "CPU result exposes no REPORT_DATA to bind a GPU to"
        )
    if not gpu_evidence:
        raise AttestationError(AttestationFailure.POLICY, "composite attestation has no GPU")
    nonce = gpu_nonce_for(report_data)
    gpus = tuple(
        verify_gpu_evidence(
            ev, chain, nonce=nonce, rims=rims, now=now, root=device_root, revocation=revocation
        )
        for ev, chain in gpu_evidence
    )
    return VerifiedComposite(cpu=cpu, gpus=gpus, gpu_nonce=nonce, verified_at=now)
