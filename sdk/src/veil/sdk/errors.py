"""Veil's exception tree. Every failure Veil raises on purpose is a ``VeilError``.

    VeilError
    ├── AttestationError        evidence did not verify, or did not satisfy the policy
    ├── DecryptionError         a sealed message did not open (one opaque error, no oracle)
    ├── ProtocolError           a message was malformed, replayed, or out of its time window
    ├── AuditLogError           the audit log, a checkpoint, or a proof did not verify
    ├── PrivacyBudgetExceeded   a training job would spend more epsilon or delta than is left
    ├── WatermarkError          a watermark could not be embedded, or a claim is malformed
    ├── ConfigError             a configuration, policy or key file, or an argument, is invalid
    └── RemoteError             the enclave answered with an error status, or the channel failed

Every family carries a machine-readable ``reason``, an enum: ``AttestationFailure``,
``ProtocolFailure``, ``AuditFailure``, ``WatermarkFailure``, ``ConfigFailure``, and for
``RemoteError`` the ``RemoteReason`` the enclave sends (the same enum its status table uses).

Third-party failures are converted where they enter (``raise AttestationError(...) from exc``),
so callers catch one root: no ``OSError``, ``ValueError`` or ``grpc.RpcError`` leaves the public
API for a failure a caller can cause. Messages are one line and say what failed and why.
"""

from __future__ import annotations

import enum
import sys
import warnings

__all__ = [
    "AttestationError",
    "AttestationFailure",
    "AuditFailure",
    "AuditLogError",
    "ConfigError",
    "ConfigFailure",
    "DecryptionError",
    "InsecureModeWarning",
    "PrivacyBudgetExceeded",
    "ProtocolError",
    "ProtocolFailure",
    "RemoteError",
    "RemoteReason",
    "VeilError",
    "WatermarkError",
    "WatermarkFailure",
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


class ProtocolFailure(enum.Enum):
    """Why a message was refused as not well formed (machine-readable)."""

    MALFORMED = "malformed"  # does not parse, or a field is out of range
    OUT_OF_ORDER = "out_of_order"  # a stream's messages arrived out of sequence or incomplete
    REPLAYED = "replayed"  # a request id or nonce was seen before
    STALE = "stale"  # outside its time window
    UNSUPPORTED = "unsupported"  # a version, suite or dtype this side does not speak


class ProtocolError(VeilError):
    """A message was malformed, replayed, out of its time window, or otherwise not well formed."""

    def __init__(
        self, message: str, *, reason: ProtocolFailure = ProtocolFailure.MALFORMED
    ) -> None:
        super().__init__(message)
        self.reason = reason


class AuditFailure(enum.Enum):
    """Why the audit log, a checkpoint, a receipt or a proof was refused (machine-readable)."""

    MALFORMED = "malformed"  # a checkpoint, note, receipt, record or export does not parse
    BAD_SIGNATURE = "bad_signature"  # a signature does not verify under the attested key
    BAD_PROOF = "bad_proof"  # an inclusion or consistency proof does not verify
    MISMATCH = "mismatch"  # two things that must agree do not (key, tenant, digest, record)
    MISSING = "missing"  # something required is absent (a receipt, a file, a key)
    UNAVAILABLE = "unavailable"  # the log could not be written or read durably


class AuditLogError(VeilError):
    """The audit log, a signed checkpoint, a receipt or a Merkle proof did not verify."""

    def __init__(self, message: str, *, reason: AuditFailure = AuditFailure.MALFORMED) -> None:
        super().__init__(message)
        self.reason = reason


class PrivacyBudgetExceeded(VeilError):
    """A training job would spend more privacy budget (epsilon or delta) than remains.

    ``remaining_epsilon`` and ``remaining_delta`` are what the dataset has left, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        remaining_epsilon: float | None = None,
        remaining_delta: float | None = None,
    ) -> None:
        super().__init__(message)
        self.remaining_epsilon = remaining_epsilon
        self.remaining_delta = remaining_delta


class WatermarkFailure(enum.Enum):
    """Why a watermark operation failed (machine-readable)."""

    MALFORMED_KEY = "malformed_key"  # a watermark key or opening does not parse
    MALFORMED_CLAIM = "malformed_claim"  # a claim does not parse or its signature fails
    MISMATCH = "mismatch"  # the claim names another model, key or layer than the one given
    UNSUPPORTED_MODEL = "unsupported_model"  # no layer the watermark can live in
    EMBED_FAILED = "embed_failed"  # embedding did not reach its target
    INVALID = "invalid"  # any other invalid argument


class WatermarkError(VeilError):
    """A watermark could not be embedded or verified, or a claim is malformed."""

    def __init__(
        self, message: str, *, reason: WatermarkFailure = WatermarkFailure.INVALID
    ) -> None:
        super().__init__(message)
        self.reason = reason


class ConfigFailure(enum.Enum):
    """Why a configuration, argument or file was refused (machine-readable)."""

    MISSING_FILE = "missing_file"  # a named file does not exist
    UNREADABLE = "unreadable"  # a file exists but cannot be read (permissions, a directory...)
    MALFORMED = "malformed"  # a file does not parse (JSON, TOML, PEM, key)
    INVALID_VALUE = "invalid_value"  # a value is out of range or of the wrong kind
    MISSING_VALUE = "missing_value"  # a required value was not given
    UNSUPPORTED = "unsupported"  # a format, kind or option this version does not support


class ConfigError(VeilError):
    """A configuration, policy or key file, or an argument, is missing or invalid."""

    def __init__(
        self, message: str, *, reason: ConfigFailure = ConfigFailure.INVALID_VALUE
    ) -> None:
        super().__init__(message)
        self.reason = reason


class RemoteReason(enum.StrEnum):
    """The enclave's ``veil-reason``: one vocabulary for the enclave (which sends it) and the SDK.

    docs/PROTOCOL.md, section 7, lists when each is sent. ``NONE`` means the status came without
    a reason (the channel itself failed, or gRPC refused the message); ``UNKNOWN`` means a reason
    this version does not know (a newer enclave): treat it by the status code.
    """

    UNAUTHENTICATED = "unauthenticated"
    NOT_FOUND = "not-found"
    TOO_LARGE = "too-large"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory-limit"
    OVERLOADED = "overloaded"
    STORAGE_FULL = "storage-full"
    BUDGET_EXHAUSTED = "budget-exhausted"
    KEY_ROTATED = "key-rotated"
    STALE_REQUEST = "stale-request"
    REPLAY = "replay"
    SESSION_EXPIRED = "session-expired"  # 1.4: the enclave holds no such session: open a new one
    UNDECRYPTABLE = "undecryptable"
    INVALID_INPUT = "invalid-input"
    MALFORMED = "malformed"
    ATTESTATION = "attestation"
    AUDIT_UNAVAILABLE = "audit-unavailable"
    INTERNAL = "internal"
    NONE = ""
    UNKNOWN = "unknown"

    @classmethod
    def parse(cls, text: str) -> RemoteReason:
        """The member for a received ``veil-reason``; ``UNKNOWN`` for one this version lacks."""
        try:
            return cls(text)
        except ValueError:
            return cls.UNKNOWN


class RemoteError(VeilError):
    """The enclave answered with a gRPC error status, or the channel to it failed.

    ``code`` is the status name (``"NOT_FOUND"``), ``reason`` the enclave's machine-readable
    ``veil-reason`` as a :class:`RemoteReason` (a ``str``, so ``reason == "key-rotated"`` holds).
    """

    def __init__(self, code: str, message: str, *, reason: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.detail = message
        self.reason = RemoteReason.parse(reason)


class InsecureModeWarning(UserWarning):
    """Emitted when Veil trusts something that is not production-grade.

    Trusting a test root (such as the simulated TEE's) or running DP noise without a secure RNG
    triggers it. It is attributed to the caller's own line (the first frame outside Veil), so
    Python's warning filters apply as usual: by default it shows once per line of your code that
    verifies under a test root; ``warnings.simplefilter("error", InsecureModeWarning)`` (or
    ``PYTHONWARNINGS="error:trusting a test root"``) turns it into an error, ``"always"`` shows it
    every time. Veil never changes the warning filters itself.
    """


def _outside_veil_stacklevel() -> int:
    """``stacklevel`` for ``warnings.warn`` called from ``warn_insecure`` that names the first
    frame outside Veil's modules (the caller's code); like Python 3.12's ``skip_file_prefixes``."""
    level, frame = 2, sys._getframe(2)  # 1: warn_insecure itself; 2: its caller
    while frame.f_back is not None and _is_veil(frame.f_globals.get("__name__")):
        frame = frame.f_back
        level += 1
    return level


def _is_veil(module: object) -> bool:
    return isinstance(module, str) and (module == "veil" or module.startswith("veil."))


def warn_insecure(message: str) -> None:
    """Warn with an ``InsecureModeWarning`` attributed to the caller's own code."""
    warnings.warn(message, InsecureModeWarning, stacklevel=_outside_veil_stacklevel())
