"""Where an enclave gets NVIDIA GPU confidential-computing evidence for a nonce.

A real source asks the GPU (NVML ``nvmlDeviceGetConfComputeGpuAttestationReport`` and
``nvmlDeviceGetConfComputeGpuCertificate``, as NVIDIA's nvtrust tools do) for SPDM
GET_MEASUREMENTS evidence over a caller's nonce plus the device certificate chain. That needs
the NVIDIA driver and a GPU in CC mode, which this project has not exercised.

``RecordedGpuEvidence`` replays evidence recorded from real hardware (e.g. the nvtrust samples):
it only answers the nonce the recording was made for, and refuses any other, so it can never
pretend a recording is fresh. The composite binding (GPU nonce = H(CPU REPORT_DATA)) lives in
``veil.sdk.attestation.gpu_nonce_for``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from veil.sdk.attestation.nvidia import SpdmEvidence
from veil.sdk.errors import AttestationError, AttestationFailure, ConfigError

__all__ = ["GpuEvidence", "GpuEvidenceSource", "RecordedGpuEvidence"]


@dataclass(frozen=True)
class GpuEvidence:
    """SPDM evidence (request ‖ response) and the device chain (PEM, leaf first)."""

    evidence: bytes
    cert_chain_pem: bytes

    @property
    def nonce(self) -> bytes:
        return SpdmEvidence.from_bytes(self.evidence).nonce


class GpuEvidenceSource(Protocol):
    """A source of GPU attestation evidence (one per GPU)."""

    @property
    def name(self) -> str: ...

    def evidence(self, nonce: bytes) -> GpuEvidence:
        """SPDM GET_MEASUREMENTS evidence whose request carries ``nonce`` (32 bytes)."""
        ...


class RecordedGpuEvidence:
    """Evidence recorded from a real GPU, replayed only for the nonce it was made for."""

    def __init__(self, recorded: GpuEvidence, *, name: str = "recorded-gpu") -> None:
        SpdmEvidence.from_bytes(recorded.evidence)  # parse at the edge: refuse garbage early
        self._recorded = recorded
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @classmethod
    def from_files(cls, evidence: Path, cert_chain: Path) -> RecordedGpuEvidence:
        """Hex or binary SPDM evidence and a PEM chain (nvtrust's ``*AttestationReport.txt``)."""
        try:
            raw = evidence.read_bytes()
            chain = cert_chain.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read recorded GPU evidence: {exc}") from exc
        return cls(GpuEvidence(evidence=hex_or_binary(raw), cert_chain_pem=chain))

    @classmethod
    def from_ppcie_json(cls, path: Path, index: int = 0) -> RecordedGpuEvidence:
        """One entry of nvtrust's PPCIe evidence JSON: base64 ``evidence`` and ``certificate``."""
        try:
            entry = json.loads(path.read_text())[index]
            evidence = base64.b64decode(str(entry["evidence"]), validate=True)
            chain = base64.b64decode(str(entry["certificate"]), validate=True)
        except (OSError, ValueError, KeyError, IndexError, TypeError, binascii.Error) as exc:
            raise ConfigError(f"{path.name}: not PPCIe evidence JSON ({exc})") from exc
        recorded = GpuEvidence(evidence=evidence, cert_chain_pem=chain)
        return cls(recorded, name=f"{path.stem}[{index}]")

    def evidence(self, nonce: bytes) -> GpuEvidence:
        if not hmac.compare_digest(self._recorded.nonce, nonce):
            raise AttestationError(
                AttestationFailure.STALE_NONCE,
                "recorded GPU evidence answers another nonce: a recording cannot be made fresh",
            )
        return self._recorded


def hex_or_binary(raw: bytes) -> bytes:
    """Evidence files come as hex text (nvtrust) or raw bytes: accept both."""
    text = raw.strip()
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return raw
