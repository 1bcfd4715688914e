"""Derived, non-authoritative views of audit records: OCSF API Activity and CSV.

Each row carries the record's leaf index and leaf hash so it can be traced back to the signed
log. The authoritative form is always ``entries.jsonl``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from veil.sdk.audit import AuditRecord, EventType, Outcome

__all__ = ["OCSF_VERSION", "csv_safe", "to_ocsf", "write_csv", "write_ocsf"]

OCSF_VERSION = "1.1.0"
_API_ACTIVITY = 6003
_APPLICATION_ACTIVITY = 6
_CREATE, _READ, _UPDATE, _DELETE, _OTHER = 1, 2, 3, 4, 99
_ACTIVITY = {
    EventType.MODEL_UPLOADED: _CREATE,
    EventType.MODEL_REGISTERED: _CREATE,
    EventType.MODEL_DELETED: _DELETE,
    EventType.TRAINING_STARTED: _CREATE,
    EventType.TRAINING_CHARGED: _UPDATE,
    EventType.WATERMARK_EMBEDDED: _CREATE,
    EventType.POLICY_CHANGED: _UPDATE,
    EventType.CONFIG_CHANGED: _UPDATE,
    EventType.ATTESTATION_SERVED: _READ,
    EventType.INFERENCE: _READ,
    EventType.WATERMARK_VERIFIED: _READ,
    EventType.AUDIT_READ: _READ,
    EventType.AUDIT_EXPORT: _READ,
}
_STATUS = {Outcome.SUCCESS: 1, Outcome.FAILURE: 2, Outcome.DENIED: 2}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS = (
    "index",
    "leaf_hash",
    "time",
    "event",
    "outcome",
    "tenant",
    "key_id",
    "origin",
    "resource",
    "details",
)


def to_ocsf(record: AuditRecord, index: int, leaf_hash: bytes, log: str) -> dict[str, Any]:
    """The record as an OCSF 1.x API Activity (class 6003) event."""
    activity = _ACTIVITY.get(record.event, _OTHER)
    event: dict[str, Any] = {
        "class_uid": _API_ACTIVITY,
        "class_name": "API Activity",
        "category_uid": _APPLICATION_ACTIVITY,
        "category_name": "Application Activity",
        "activity_id": activity,
        "type_uid": _API_ACTIVITY * 100 + activity,
        "severity_id": 1 if record.outcome is Outcome.SUCCESS else 3,
        "status_id": _STATUS[record.outcome],
        "status": record.outcome.value,
        "time": int(record.when.timestamp() * 1000),
        "time_dt": record.time,
        "metadata": {
            "version": OCSF_VERSION,
            "product": {"name": "Veil", "vendor_name": "Veil"},
            "log_name": log,
            "sequence": index,
            "uid": leaf_hash.hex(),
        },
        "actor": {"user": {"uid": record.key_id, "account": {"uid": record.tenant}}},
        "api": {"operation": record.event.value},
        "src_endpoint": {"name": record.origin},
        "unmapped": {"details": dict(json.loads(record.to_line())["details"])},
    }
    if record.resource is not None:
        event["resources"] = [{"uid": record.resource}]
    return event


def write_ocsf(path: Path, rows: Iterable[tuple[int, bytes, AuditRecord]], log: str) -> None:
    with path.open("w", encoding="utf-8") as f:
        for index, leaf_hash, record in rows:
            f.write(json.dumps(to_ocsf(record, index, leaf_hash, log), sort_keys=True) + "\n")


def csv_safe(cell: str) -> str:
    """Neutralise spreadsheet formula injection: prefix risky leading characters with a quote."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def write_csv(path: Path, rows: Iterable[tuple[int, bytes, AuditRecord]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
        writer.writerow(CSV_COLUMNS)
        for index, leaf_hash, record in rows:
            details = json.dumps(json.loads(record.to_line())["details"], sort_keys=True)
            cells = [
                str(index),
                leaf_hash.hex(),
                record.time,
                record.event.value,
                record.outcome.value,
                record.tenant,
                record.key_id or "",
                record.origin,
                record.resource or "",
                details,
            ]
            writer.writerow([csv_safe(c) for c in cells])
