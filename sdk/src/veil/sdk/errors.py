"""Veil's exception tree. Every failure Veil raises on purpose is a ``VeilError``.

    VeilError
    ├── AttestationError        evidence did not verify, or did not satisfy the policy
    ├── DecryptionError         a sealed message did not open (one opaque error, no oracle)
    ├── ProtocolError           a message was malformed, replayed, or out of its time window
    ├── AuditLogError           the audit log, a checkpoint, or a proof did not verify
    ├── PrivacyBudgetExceeded   a training job would spend more epsilon than is left
    ├── WatermarkError          a watermark could not be embedded, or a claim is malformed
    ├── ConfigError             a configuration or policy file is invalid
    └── RemoteError             the enclave answered with a gRPC error status

Third-party failures are converted where they enter (``raise AttestationError(...) from exc``),
so callers catch one root. Messages are one line and say what failed and why.
"""

from __future__ import annotations

import enum
import warnings

__all__ = [
    "AttestationError",
    "AttestationFailure",
    "AuditLogError",
    "ConfigError",
    "DecryptionError",
    "InsecureModeWarning",
    "PrivacyBudgetExceeded",
    "ProtocolError",
    "RemoteError",
    "VeilError",
    "WatermarkError",
    "warn_insecure",
]


class VeilError(Exception):
    """Root of every error Veil raises on purpose."""


class AttestationFailure(enum.Enum):
    """Why attestation evidence was rejected (machine-readable; the message is for people)."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNTRUSTED_ROOT = "untrusted_root"
    BAD_CHAIN = "bad_chain"
    CERT_EXPIRED = "cert_expired"
    REVOKED = "revoked"
    CERT_MISMATCH = "cert_mismatch"
    DEBUG_ENCLAVE = "debug_enclave"
    MEASUREMENT_MISMATCH = "measurement_mismatch"
    TCB_TOO_LOW = "tcb_too_low"
    VMPL_NOT_ALLOWED = "vmpl_not_allowed"
    STALE_NONCE = "stale_nonce"
    UNBOUND_KEY = "unbound_key"
    EXPIRED = "expired"
    POLICY = "policy"
    UNSUPPORTED = "unsupported"


class AttestationError(VeilError):
    """Attestation evidence did not verify or did not satisfy the policy.

    ``reason`` says which check failed; the message says how, in one line.
    """

    def __init__(self, reason: AttestationFailure, message: str) -> None:
        super().__init__(f"attestation rejected ({reason.value}): {message}")
        self.reason = reason
        self.detail = message


class DecryptionError(VeilError):
    """A sealed message could not be opened. Deliberately says nothing about which check failed."""

    def __init__(self, message: str = "sealed message could not be opened") -> None:
        super().__init__(message)


class ProtocolError(VeilError):
    """A message was malformed, replayed, out of its time window, or otherwise not well formed."""


class AuditLogError(VeilError):
    """The audit log, a signed checkpoint, a receipt or a Merkle proof did not verify."""


class PrivacyBudgetExceeded(VeilError):
    """A training job would spend more privacy budget (epsilon) than remains."""

    def __init__(self, message: str, *, remaining_epsilon: float | None = None) -> None:
        super().__init__(message)
        self.remaining_epsilon = remaining_epsilon


class WatermarkError(VeilError):
    """A watermark could not be embedded or verified, or a claim is malformed."""


class ConfigError(VeilError):
    """A configuration, policy or key file is missing or invalid."""


class RemoteError(VeilError):
    """The enclave answered with a gRPC error status.

    ``code`` is the status name (``"NOT_FOUND"``), ``reason`` the enclave's machine-readable
    ``veil-reason`` (``"key-rotated"``, ``"replay"``…) when it sent one.
    """

    def __init__(self, code: str, message: str, *, reason: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.detail = message
        self.reason = reason


class InsecureModeWarning(UserWarning):
    """Emitted every time Veil trusts something that is not production-grade.

    Trusting a test root (such as the simulated TEE's) or running DP noise without a secure RNG
    triggers it, on every use, never just once.
    """


# Shown every time, not once per location: an insecure mode must never go quiet after its first
# use. An application may still silence it explicitly with its own, later, warnings filter.
warnings.simplefilter("always", InsecureModeWarning)


def warn_insecure(message: str, *, stacklevel: int = 3) -> None:
    """Warn loudly, every time (see the filter above)."""
    warnings.warn(message, InsecureModeWarning, stacklevel=stacklevel)
