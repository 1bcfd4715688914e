"""Audit records: one canonical JSON line per security-relevant event.

Fields cover PCI DSS 10.2.2: who (``tenant``, ``key_id``), what (``event``), when (``time``,
UTC RFC 3339), ``outcome``, ``origin``, the affected ``resource`` and event-specific ``details``.
Records never carry plaintext inputs, outputs or keys: use :class:`DigestKey` to put keyed
digests (HMAC-SHA256 under a per-log digest key) in ``details``.

Each record is serialised as RFC 8785 (JCS) canonical JSON. Record keys are restricted to
``[a-z0-9_]`` and values to strings, safe integers, booleans, null, lists and objects (no
floats), a domain on which JCS output coincides byte for byte with ``json.dumps(sort_keys=True,
separators=(",", ":"), ensure_ascii=False)``; we use that fast encoder and the test suite checks it
against the ``rfc8785`` package. The Merkle leaf is the exact UTF-8 bytes of the line, without
the terminating newline.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from veil.sdk.errors import AuditLogError

__all__ = [
    "RECORD_VERSION",
    "AuditRecord",
    "DigestKey",
    "EventType",
    "Outcome",
    "canonical_json",
    "format_time",
]

RECORD_VERSION = 1
_KEY = re.compile(r"[a-z0-9_]{1,64}")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_SAFE_INT = 2**53 - 1
_MAX_DEPTH = 8
_FIELDS = frozenset(
    {"v", "time", "event", "outcome", "tenant", "key_id", "origin", "resource", "details"}
)
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z")


class EventType(enum.Enum):
    ATTESTATION_SERVED = "attestation_served"
    MODEL_UPLOADED = "model_uploaded"
    MODEL_REGISTERED = "model_registered"
    MODEL_DELETED = "model_deleted"
    MODEL_LISTED = "model_listed"
    DATASET_UPLOADED = "dataset_uploaded"
    BUDGET_READ = "budget_read"
    INFERENCE = "inference"
    TRAINING_STARTED = "training_started"
    TRAINING_CHARGED = "training_charged"
    TRAINING_FINISHED = "training_finished"
    WATERMARK_EMBEDDED = "watermark_embedded"
    WATERMARK_VERIFIED = "watermark_verified"
    AUTH_FAILURE = "auth_failure"
    POLICY_CHANGED = "policy_changed"
    CONFIG_CHANGED = "config_changed"
    SERVICE_START = "service_start"
    SERVICE_STOP = "service_stop"
    AUDIT_READ = "audit_read"
    AUDIT_EXPORT = "audit_export"


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    DENIED = "denied"


def format_time(when: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z`` suffix; naive datetimes are refused."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise AuditLogError("audit times must be timezone-aware")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    if not _TIME.fullmatch(text):
        raise AuditLogError(f"audit time {text!r} is not RFC 3339 UTC (…Z)")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise AuditLogError(f"audit time {text!r} is not a valid date") from exc


def _check_value(value: object, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise AuditLogError("audit record details are nested too deeply")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > _MAX_SAFE_INT:
            raise AuditLogError("audit record integers must be within ±(2**53 - 1)")
        return
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise AuditLogError("audit record strings must be valid Unicode") from exc
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_value(item, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not _KEY.fullmatch(key):
                raise AuditLogError(f"audit record key {key!r} must match [a-z0-9_]{{1,64}}")
            _check_value(item, depth + 1)
        return
    raise AuditLogError(f"audit record values cannot be {type(value).__name__}")


def _dumps(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """RFC 8785 canonical JSON of a value in the record domain (see module docstring)."""
    _check_value(value)
    return _dumps(value)


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise AuditLogError(f"tenant {tenant!r} must match [A-Za-z0-9][A-Za-z0-9._-]{{0,63}}")
    return tenant


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@dataclass(frozen=True)
class AuditRecord:
    """One security-relevant event. ``details`` holds digests and identifiers, never plaintext."""

    time: str
    event: EventType
    outcome: Outcome
    tenant: str
    origin: str
    key_id: str | None = None
    resource: str | None = None
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    _line: bytes = field(init=False, repr=False, compare=False, default=b"")

    def __post_init__(self) -> None:
        parse_time(self.time)
        check_tenant(self.tenant)
        if not isinstance(self.event, EventType) or not isinstance(self.outcome, Outcome):
            raise AuditLogError("audit record event and outcome must be EventType and Outcome")
        for name in ("origin", "key_id", "resource"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise AuditLogError(f"audit record {name} must be a string")
        _check_value(self.details)
        object.__setattr__(self, "details", _freeze(self.details))
        object.__setattr__(self, "_line", _dumps(self.to_dict()))

    @classmethod
    def create(
        cls,
        *,
        now: datetime,
        event: EventType,
        outcome: Outcome,
        tenant: str,
        origin: str,
        key_id: str | None = None,
        resource: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditRecord:
        return cls(
            time=format_time(now),
            event=event,
            outcome=outcome,
            tenant=tenant,
            origin=origin,
            key_id=key_id,
            resource=resource,
            details=details or {},
        )

    @property
    def when(self) -> datetime:
        return parse_time(self.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION,
            "time": self.time,
            "event": self.event.value,
            "outcome": self.outcome.value,
            "tenant": self.tenant,
            "key_id": self.key_id,
            "origin": self.origin,
            "resource": self.resource,
            "details": _thaw(self.details),
        }

    def to_line(self) -> bytes:
        """The canonical JSON line (no newline): exactly the Merkle leaf."""
        return self._line

    @classmethod
    def from_line(cls, line: bytes) -> AuditRecord:
        """Parse one log line; it must be valid, complete and in canonical form."""
        try:
            obj = json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            raise AuditLogError("audit record is not valid JSON") from exc
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            raise AuditLogError("audit record does not have exactly the expected fields")
        if obj["v"] != RECORD_VERSION:
            raise AuditLogError(f"audit record version {obj['v']!r} is not supported")
        try:
            record = cls(
                time=obj["time"],
                event=EventType(obj["event"]),
                outcome=Outcome(obj["outcome"]),
                tenant=obj["tenant"],
                origin=obj["origin"],
                key_id=obj["key_id"],
                resource=obj["resource"],
                details=obj["details"] if isinstance(obj["details"], dict) else {"": None},
            )
        except (ValueError, TypeError) as exc:
            raise AuditLogError(f"audit record field is invalid: {exc}") from exc
        if record.to_line() != line:
            raise AuditLogError("audit record is not in canonical (RFC 8785) form")
        return record


@dataclass(frozen=True, repr=False)
class DigestKey:
    """Per-log key for keyed digests (HMAC-SHA256) of payloads that must never be logged."""

    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) < 32:
            raise AuditLogError("audit digest key must be at least 32 bytes")

    def __repr__(self) -> str:
        return "DigestKey(<redacted>)"

    def digest(self, data: bytes) -> str:
        """``hmac-sha256:<hex>`` of ``data`` under this key."""
        return "hmac-sha256:" + hmac.new(self.key, data, hashlib.sha256).hexdigest()

    def digest_parts(self, parts: Iterable[bytes | memoryview]) -> str:
        """``digest`` of the concatenation of ``parts``, fed one by one (nothing is joined)."""
        mac = hmac.new(self.key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        return "hmac-sha256:" + mac.hexdigest()
