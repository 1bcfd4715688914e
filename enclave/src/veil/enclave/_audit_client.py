"""The audit log as a worker process sees it: every write and read goes to the supervisor.

With ``[server] workers = N`` the supervisor is the audit log's only writer. A worker's
:class:`AuditClient` is an ``AuditLog`` whose methods are calls over the worker's private
control channel (``veil.enclave._ipc``); the supervisor's :class:`SupervisorDesk` answers them
with its own ``AuditLog``. ``append_with_receipt`` returns once the record is durable, as in
one process, and concurrent appends from every worker share the supervisor's group commit: one
fsync and, for v2 receipts, one signature per batch.

What stays in the worker: the keyed digest (HMAC) of payloads, and the log's signing key for
training certificates. Both came with the fork; the worker is the same enclave, measured once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from datetime import datetime
from pathlib import Path
from typing import Any

from veil.enclave._keys import Epochs, KeyEpoch
from veil.enclave._telemetry import stage
from veil.enclave.audit import Appended, AuditLog, ExportFormat, ExportResult, Signer
from veil.sdk.audit import AuditRecord, DigestKey
from veil.sdk.errors import AuditLogError
from veil.sdk.evidence import from_ms, to_ms

__all__ = ["AuditClient", "SupervisorDesk", "epochs_from_wire", "epochs_to_wire"]

log = logging.getLogger("veil.enclave")

Call = Callable[..., Any]
EpochsWire = tuple[tuple[str, bytes, bytes, int], tuple[str, bytes, bytes, int] | None]


def epochs_to_wire(epochs: Epochs) -> EpochsWire:
    current, previous = epochs
    return current.to_wire(), previous.to_wire() if previous is not None else None


def epochs_from_wire(wire: EpochsWire) -> Epochs:
    current, previous = wire
    return KeyEpoch.from_wire(current), KeyEpoch.from_wire(previous) if previous else None


class AuditClient(AuditLog):
    """An ``AuditLog`` whose state lives in the supervisor (see the module docstring)."""

    def __init__(
        self,
        call: Call,
        *,
        directory: Path,
        signer: Signer,
        digest_key: DigestKey | None,
        clock: Callable[[], datetime],
    ) -> None:
        # Deliberately not AuditLog.__init__: no files, no threads here.
        self.directory = directory
        self.signer = signer
        self._clock = clock
        self._digest_key = digest_key
        self._call = call

    def _tenant(self, tenant: str) -> Any:
        raise AuditLogError("a worker process holds no audit log files")

    def tenants(self) -> list[str]:
        return list(self._call("tenants"))

    @stage("audit_append")
    def append(self, record: AuditRecord) -> int:
        return int(self._call("append", record.to_line()))

    @stage("audit_append")
    def append_with_receipt(
        self,
        record: AuditRecord,
        *,
        request_digest: str,
        response_digest: str,
        model_digest: str | None = None,
        receipt_version: int = 1,
    ) -> Appended:
        index, leaf_hash, receipt = self._call(
            "append_receipt",
            record.to_line(),
            request_digest,
            response_digest,
            model_digest,
            receipt_version,
        )
        return Appended(index=index, leaf_hash=leaf_hash, receipt=receipt)

    def checkpoint(self, tenant: str) -> str:
        return str(self._call("checkpoint", tenant))

    def signed_checkpoint(self, tenant: str, size: int) -> str:
        return str(self._call("signed_checkpoint", tenant, size))

    def publish_checkpoints(self) -> None:
        """The supervisor publishes them."""

    def inclusion_proof(self, tenant: str, index: int, tree_size: int) -> list[bytes]:
        return list(self._call("inclusion_proof", tenant, index, tree_size))

    def consistency_proof(self, tenant: str, size1: int, size2: int) -> list[bytes]:
        return list(self._call("consistency_proof", tenant, size1, size2))

    def size(self, tenant: str) -> int:
        return int(self._call("size", tenant))

    def leaf_hash(self, tenant: str, index: int) -> bytes:
        return bytes(self._call("leaf_hash", tenant, index))

    def root(self, tenant: str, tree_size: int | None = None) -> bytes:
        return bytes(self._call("root", tenant, tree_size))

    def export(
        self,
        tenant: str,
        out_dir: str | Path,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        start: int = 0,
        fmt: ExportFormat | Collection[ExportFormat] = ExportFormat.JSONL,
    ) -> ExportResult:
        """Written by the supervisor into ``out_dir`` (same machine, same user)."""
        formats = [fmt] if isinstance(fmt, ExportFormat) else list(fmt)
        directory, tenant, tree_size, entries, checkpoint, files = self._call(
            "export",
            tenant,
            str(Path(out_dir).resolve()),
            to_ms(since) if since is not None else None,
            to_ms(until) if until is not None else None,
            start,
            sorted(f.value for f in formats),
        )
        return ExportResult(
            directory=Path(directory),
            tenant=tenant,
            tree_size=tree_size,
            entry_count=entries,
            checkpoint=checkpoint,
            files=tuple(files),
        )

    def close(self) -> None:
        """Nothing to flush: every append already returned durable."""


class SupervisorDesk:
    """Answers the workers' calls with the supervisor's own audit log and key ring.

    ``fresh_epoch`` rotates when the current epoch nears expiry and then pushes the epochs to
    every worker (``broadcast``). ``counts`` is how many records each worker had appended (the
    supervisor logs them; at DEBUG it logs each record's tenant and leaf index with its worker).
    """

    def __init__(
        self,
        audit: AuditLog,
        *,
        epochs: Callable[[], Epochs],
        fresh_epoch: Callable[[], KeyEpoch],
        broadcast: Callable[[Epochs], None],
        on_ready: Callable[[int, int], None],
    ) -> None:
        self._audit = audit
        self._epochs = epochs
        self._fresh_epoch = fresh_epoch
        self._broadcast = broadcast
        self._on_ready = on_ready
        self._lock = threading.Lock()
        self.counts: dict[int, int] = {}

    def _count(self, worker: int, tenant: str, index: int) -> None:
        with self._lock:
            self.counts[worker] = self.counts.get(worker, 0) + 1
        log.debug("audit: worker=%d tenant=%s leaf=%d", worker, tenant, index)

    def handle(self, worker: int, op: str, args: tuple[Any, ...]) -> Any:
        audit = self._audit
        if op == "append_receipt":
            line, request_digest, response_digest, model_digest, version = args
            record = AuditRecord.from_line(line)
            appended = audit.append_with_receipt(
                record,
                request_digest=request_digest,
                response_digest=response_digest,
                model_digest=model_digest,
                receipt_version=version,
            )
            self._count(worker, record.tenant, appended.index)
            return appended.index, appended.leaf_hash, appended.receipt
        if op == "append":
            record = AuditRecord.from_line(args[0])
            index = audit.append(record)
            self._count(worker, record.tenant, index)
            return index
        if op == "checkpoint":
            return audit.checkpoint(args[0])
        if op == "signed_checkpoint":
            return audit.signed_checkpoint(args[0], args[1])
        if op == "size":
            return audit.size(args[0])
        if op == "inclusion_proof":
            return audit.inclusion_proof(*args)
        if op == "consistency_proof":
            return audit.consistency_proof(*args)
        if op == "leaf_hash":
            return audit.leaf_hash(*args)
        if op == "root":
            return audit.root(*args)
        if op == "tenants":
            return audit.tenants()
        if op == "export":
            return self._export(*args)
        if op == "epochs":
            return epochs_to_wire(self._epochs())
        if op == "fresh_epoch":
            before = self._epochs()[0].key_id
            self._fresh_epoch()
            epochs = self._epochs()
            if epochs[0].key_id != before:
                self._broadcast(epochs)
            return epochs_to_wire(epochs)
        if op == "ready":
            self._on_ready(worker, args[0])
            return None
        raise AuditLogError(f"unknown control call {op!r}")

    def _export(
        self,
        tenant: str,
        out_dir: str,
        since_ms: int | None,
        until_ms: int | None,
        start: int,
        formats: list[str],
    ) -> tuple[str, str, int, int, str, tuple[str, ...]]:
        result = self._audit.export(
            tenant,
            Path(out_dir),
            since=from_ms(since_ms) if since_ms is not None else None,
            until=from_ms(until_ms) if until_ms is not None else None,
            start=start,
            fmt={ExportFormat(f) for f in formats},
        )
        return (
            str(result.directory),
            result.tenant,
            result.tree_size,
            result.entry_count,
            result.checkpoint,
            result.files,
        )
