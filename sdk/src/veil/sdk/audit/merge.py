"""One tenant's audit logs from several replicas, merged into one export, verified as a whole.

Each replica of a replicated deployment keeps its own log under its own key, bound to its own
attestation (docs/SCALE-OUT.md). A merged export is a folder holding every replica's export
unchanged under ``replicas/<n>/`` plus ``merged.jsonl``: every entry of every replica, one per
line, as canonical JSON ``{"index": i, "line": "<the entry line>", "log": "<log key name>"}``,
ordered by the record's time, then log name, then index. ``verify_merged_export`` verifies
each replica's export (its key bound by its attestation through ``attestation_check``), that
the replicas' keys differ, that all are the same tenant's, and that ``merged.jsonl`` holds
exactly the verified entries, each once, in that order: nothing added, dropped or altered.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from veil.sdk.audit.export import VerifiedExport, verify_export
from veil.sdk.audit.records import AuditRecord
from veil.sdk.errors import AuditFailure, AuditLogError

__all__ = ["MERGED_FILE", "REPLICAS_DIR", "VerifiedMerge", "merge_exports", "verify_merged_export"]

MERGED_FILE = "merged.jsonl"
REPLICAS_DIR = "replicas"


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _rows(exports: Sequence[VerifiedExport]) -> list[tuple[str, str, int, str]]:
    """(time, log, index, line) of every entry, in merged order."""
    rows = []
    for export in exports:
        log = export.checkpoint.origin
        for (index, record), line in zip(export.records(), export.lines, strict=True):
            rows.append((record.time, log, index, line))
    rows.sort()
    return rows


def merge_exports(exports: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Copy each replica's export under ``out_dir/replicas/`` and write ``merged.jsonl``.

    The exports are read as they are (verify the result with ``verify_merged_export``).
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise AuditLogError(f"{out} is not empty", reason=AuditFailure.MISMATCH)
    out.mkdir(parents=True, exist_ok=True)
    verified = []
    for n, source in enumerate(exports):
        target = out / REPLICAS_DIR / str(n)
        shutil.copytree(source, target)
        verified.append(_unchecked(target))
    with (out / MERGED_FILE).open("w", encoding="utf-8") as f:
        for _, log, index, line in _rows(verified):
            f.write(_canonical({"index": index, "line": line, "log": log}) + "\n")
    return out


def _unchecked(directory: Path) -> VerifiedExport:
    import warnings

    with warnings.catch_warnings():  # merging only arranges; verify_merged_export verifies
        warnings.simplefilter("ignore")
        return verify_export(directory)


@dataclass(frozen=True)
class VerifiedMerge:
    """What a verified merged export proves: these replicas' logs, all of their entries."""

    path: Path
    tenant: str
    replicas: tuple[VerifiedExport, ...]
    entry_count: int

    def entries(self) -> Iterator[tuple[str, int, AuditRecord]]:
        """(log name, index, record) in merged order."""
        for _, log, index, line in _rows(self.replicas):
            yield log, index, AuditRecord.from_line(line.encode())


def verify_merged_export(
    directory: str | Path,
    *,
    attestation_check: Callable[[Path], str] | None = None,
) -> VerifiedMerge:
    """Verify every replica's export and the merge; raise ``AuditLogError`` naming the defect."""
    root = Path(directory)
    parts = sorted((root / REPLICAS_DIR).iterdir()) if (root / REPLICAS_DIR).is_dir() else []
    if not parts:
        raise AuditLogError(f"{root} holds no replica exports", reason=AuditFailure.MISSING)
    exports = tuple(verify_export(p, attestation_check=attestation_check) for p in parts)
    tenants = {e.tenant for e in exports}
    if len(tenants) != 1:
        raise AuditLogError(f"merged logs of several tenants {sorted(tenants)}")
    keys = [e.vkey for e in exports]
    if len(set(keys)) != len(keys):
        raise AuditLogError("two replica exports are the same log", reason=AuditFailure.MISMATCH)
    expected = [
        _canonical({"index": index, "line": line, "log": log})
        for _, log, index, line in _rows(exports)
    ]
    try:
        shown = (root / MERGED_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditLogError(f"{MERGED_FILE} cannot be read", reason=AuditFailure.MISSING) from exc
    for n, (line, want) in enumerate(zip(shown, expected, strict=False), start=1):
        if line != want:
            raise AuditLogError(
                f"{MERGED_FILE} line {n} is not the verified entry at that place of the merge",
                reason=AuditFailure.MISMATCH,
            )
    if len(shown) != len(expected):
        what = "lacks" if len(shown) < len(expected) else "adds"
        raise AuditLogError(
            f"{MERGED_FILE} {what} {abs(len(shown) - len(expected))} entries",
            reason=AuditFailure.MISMATCH,
        )
    return VerifiedMerge(root, tenants.pop(), exports, len(expected))
