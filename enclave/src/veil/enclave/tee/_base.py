"""What the service needs from a TEE: evidence over 64 bytes of REPORT_DATA, and sealing keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["RawEvidence", "TeeProvider"]


@dataclass(frozen=True)
class RawEvidence:
    """Hardware evidence as produced: the report and the certificates (DER) that verify it."""

    tee: str
    report: bytes
    cert_chain: tuple[bytes, ...]


class TeeProvider(Protocol):
    """A source of attestation evidence (real hardware or the simulated TEE)."""

    @property
    def name(self) -> str: ...

    def evidence(self, report_data: bytes, measurement: bytes) -> RawEvidence:
        """Evidence whose REPORT_DATA is ``report_data`` (64 bytes).

        ``measurement`` is what the simulated TEE reports; real hardware measures itself and
        ignores it.
        """
        ...

    def sealing_key(self, label: bytes) -> bytes:
        """A 32-byte key only this TEE instance can derive (for data at rest)."""
        ...
