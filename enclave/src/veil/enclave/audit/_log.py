"""The service's audit log: per-tenant durable logs, signed checkpoints, proofs, receipts, export.

``AuditLog(directory, signer, clock=...)`` keeps one :class:`TenantLog` per tenant under
``directory/<tenant>/``. A background thread signs and persists a checkpoint for every tenant
whose tree grew, every ``checkpoint_interval`` seconds (default 1 s). The log key is an Ed25519
:class:`Signer` the enclave generates in memory at boot; its vkey is what attestation binds and
clients pin. Checkpoint origins are ``<signer name>/<tenant>``.

With ``headroom_bytes`` the log keeps a :class:`HeadroomReserve` in its directory: released when
an append finds the disk full (the append is retried into the freed space), re-created by the
checkpoint thread once there is room again.
"""

from __future__ import annotations

import base64
import enum
import functools
import json
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from veil.enclave._telemetry import stage
from veil.enclave.audit._reserve import RESERVE_FILE, HeadroomReserve
from veil.enclave.audit._signer import Signer
from veil.enclave.audit._tenant_log import FileOps, TenantLog
from veil.enclave.audit._views import write_csv, write_ocsf
from veil.sdk.audit import (
    AuditRecord,
    Checkpoint,
    DigestKey,
    Receipt,
    Verifier,
    batch_receipts,
)
from veil.sdk.audit.export import (
    ATTESTATION_DIR,
    CHECKPOINT_FILE,
    ENTRIES_FILE,
    LEAF_HASHES_FILE,
    PROOFS_FILE,
    PUBKEY_FILE,
)
from veil.sdk.audit.records import check_tenant, format_time, parse_time
from veil.sdk.errors import AuditLogError

__all__ = ["Appended", "AuditLog", "ExportFormat", "ExportResult"]

_log = logging.getLogger("veil.audit")
_TIME_SUFFIX = b'","v":1}'
_TIME_KEY = b'"time":"'
_TIME_LEN = 27


class ExportFormat(enum.Enum):
    """Views written by ``export``; ``entries.jsonl`` (JSONL) is always written."""

    JSONL = "jsonl"
    OCSF = "ocsf"
    CSV = "csv"


@dataclass(frozen=True)
class Appended:
    """A durable record: its leaf index and hash, and the signed receipt for the client."""

    index: int
    leaf_hash: bytes
    receipt: str


@dataclass(frozen=True)
class _Wanted:
    """What an appender hands its batch's ``on_commit`` for a v2 receipt."""

    request_digest: str
    response_digest: str
    model_digest: str | None


@dataclass(frozen=True)
class _Made:
    leaf_hash: bytes
    receipt: str


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    tenant: str
    tree_size: int
    entry_count: int
    checkpoint: str
    files: tuple[str, ...]


def _line_time(line: bytes) -> datetime:
    """Record time from a canonical line (the ``time`` key is always next to last)."""
    end = len(line) - len(_TIME_SUFFIX)
    start = end - _TIME_LEN
    if line.endswith(_TIME_SUFFIX) and line[start - len(_TIME_KEY) : start] == _TIME_KEY:
        return parse_time(line[start:end].decode("ascii"))
    return AuditRecord.from_line(line).when


class AuditLog:
    """Thread-safe audit log for every tenant of one service instance."""

    def __init__(
        self,
        directory: str | Path,
        signer: Signer,
        *,
        clock: Callable[[], datetime],
        digest_key: DigestKey | None = None,
        checkpoint_interval: float | None = 1.0,
        group_commit: bool = True,
        file_ops: Callable[[str], FileOps] | None = None,
        headroom_bytes: int = 0,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.signer = signer
        self._clock = clock
        self._digest_key = digest_key
        self._group_commit = group_commit
        self._file_ops = file_ops
        self.reserve = HeadroomReserve(self.directory / RESERVE_FILE, headroom_bytes)
        self.reserve.ensure()
        self._logs: dict[str, TenantLog] = {}
        self._published: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._stop = threading.Event()
        self._publisher: threading.Thread | None = None
        if checkpoint_interval is not None:
            if checkpoint_interval <= 0:
                raise AuditLogError("checkpoint interval must be positive")
            self._publisher = threading.Thread(
                target=self._publish_loop,
                args=(checkpoint_interval,),
                name="veil-audit-checkpoints",
                daemon=True,
            )
            self._publisher.start()

    # -- keys and names ------------------------------------------------------------------------

    @property
    def verifier(self) -> Verifier:
        return self.signer.verifier

    @property
    def vkey(self) -> str:
        return self.signer.vkey

    def origin(self, tenant: str) -> str:
        return f"{self.signer.name}/{check_tenant(tenant)}"

    def digest(self, data: bytes) -> str:
        """Keyed digest (HMAC-SHA256) for putting payload fingerprints in records."""
        return self._key().digest(data)

    def digest_parts(self, parts: Iterable[bytes | memoryview]) -> str:
        """``digest`` of the concatenated ``parts``, without joining them."""
        return self._key().digest_parts(parts)

    def _key(self) -> DigestKey:
        if self._digest_key is None:
            raise AuditLogError("this audit log was created without a digest key")
        return self._digest_key

    def _tenant(self, tenant: str) -> TenantLog:
        check_tenant(tenant)
        with self._lock:
            log = self._logs.get(tenant)
            if log is None:
                ops = self._file_ops(tenant) if self._file_ops is not None else None
                log = TenantLog(
                    self.directory / tenant,
                    group_commit=self._group_commit,
                    file_ops=ops,
                    on_disk_full=self.reserve.release,
                    on_commit=functools.partial(self._receipt_batch, tenant),
                )
                self._logs[tenant] = log
            return log

    def tenants(self) -> list[str]:
        """Tenants with a log on disk."""
        return sorted(p.name for p in self.directory.iterdir() if (p / "entries.jsonl").is_file())

    # -- appending -----------------------------------------------------------------------------

    @stage("audit_append")
    def append(self, record: AuditRecord) -> int:
        """Append a record to its tenant's log; returns the leaf index once it is durable."""
        return self._tenant(record.tenant).append_line(record.to_line())

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
        """Append a record and make its receipt once it is durable.

        ``receipt_version`` 1: a receipt signed for this record alone. 2: a v2 receipt, signed
        once for every v2 receipt of the same group commit (``veil.sdk.audit.batch_receipts``).
        """
        log = self._tenant(record.tenant)
        if receipt_version >= 2:
            wanted = _Wanted(request_digest, response_digest, model_digest)
            index, made = log.append(record.to_line(), wanted)
            if not isinstance(made, _Made):
                raise AuditLogError("the audit log made no receipt for a durable record")
            return Appended(index=index, leaf_hash=made.leaf_hash, receipt=made.receipt)
        index = log.append_line(record.to_line())
        leaf_hash = log.leaf_hash(index)
        receipt = Receipt(
            log=self.origin(record.tenant),
            tenant=record.tenant,
            leaf_index=index,
            leaf_hash=leaf_hash,
            time=format_time(self._clock()),
            request_digest=request_digest,
            response_digest=response_digest,
            model_digest=model_digest,
        )
        return Appended(
            index=index, leaf_hash=leaf_hash, receipt=self.signer.sign_note(receipt.body())
        )

    def _receipt_batch(
        self, tenant: str, first: int, hashes: list[bytes], extras: list[object]
    ) -> list[object]:
        """On the batch's leader thread, once it is durable: its v2 receipts, one signature."""
        wanted = [(i, e) for i, e in enumerate(extras) if isinstance(e, _Wanted)]
        results: list[object] = [None] * len(extras)
        if not wanted:
            return results
        now = format_time(self._clock())
        receipts = [
            Receipt(
                log=self.origin(tenant),
                tenant=tenant,
                leaf_index=first + i,
                leaf_hash=hashes[i],
                time=now,
                request_digest=w.request_digest,
                response_digest=w.response_digest,
                model_digest=w.model_digest,
            )
            for i, w in wanted
        ]
        for (i, _), text in zip(
            wanted, batch_receipts(receipts, self.signer.sign_note), strict=True
        ):
            results[i] = _Made(hashes[i], text)
        return results

    # -- checkpoints and proofs ----------------------------------------------------------------

    def _sign_checkpoint(self, tenant: str, size: int, root: bytes) -> str:
        body = Checkpoint(origin=self.origin(tenant), size=size, root_hash=root).to_text()
        return self.signer.sign_note(body)

    def _publish(self, tenant: str, log: TenantLog) -> str:
        """Sign the durable tree; persist it (best effort: a full disk must not block reads)."""
        with self._publish_lock:
            size, root = log.snapshot()
            last = self._published.get(tenant)
            if last is not None and last[0] == size:
                return last[1]
            note = self._sign_checkpoint(tenant, size, root)
            try:
                log.write_checkpoint(note)
            except OSError as exc:  # the persisted checkpoint only lags; retried next time
                _log.error("audit checkpoint for %s not persisted: %s", tenant, exc.strerror)
                return note
            self._published[tenant] = (size, note)
            return note

    def checkpoint(self, tenant: str) -> str:
        """The latest signed checkpoint note for the tenant, covering every durable record."""
        return self._publish(tenant, self._tenant(tenant))

    def signed_checkpoint(self, tenant: str, size: int) -> str:
        """A freshly signed checkpoint for an earlier tree size (for proofs against it)."""
        return self._sign_checkpoint(tenant, size, self.root(tenant, size))

    def publish_checkpoints(self) -> None:
        """Sign and persist a checkpoint for every tenant whose tree grew."""
        with self._lock:
            logs = list(self._logs.items())
        for tenant, log in logs:
            self._publish(tenant, log)

    def _publish_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.publish_checkpoints()
            except (OSError, AuditLogError) as exc:
                _log.error("audit checkpoint publication failed: %s", exc)
            self.reserve.ensure()

    def inclusion_proof(self, tenant: str, index: int, tree_size: int) -> list[bytes]:
        return self._tenant(tenant).inclusion_proof(index, tree_size)

    def consistency_proof(self, tenant: str, size1: int, size2: int) -> list[bytes]:
        return self._tenant(tenant).consistency_proof(size1, size2)

    def size(self, tenant: str) -> int:
        return self._tenant(tenant).size

    def leaf_hash(self, tenant: str, index: int) -> bytes:
        return self._tenant(tenant).leaf_hash(index)

    def root(self, tenant: str, tree_size: int | None = None) -> bytes:
        """Root hash of the tenant's tree at ``tree_size`` (default: every durable record)."""
        return self._tenant(tenant).root(tree_size)

    # -- export --------------------------------------------------------------------------------

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
        """Write a verifiable export of the tenant's log.

        It holds the records with index ``>= start`` and ``since <= time < until``. Without
        any of these the export is full: ``entries.jsonl`` is exactly the signed tree and
        ``leafhashes.bin`` lists its leaf hashes. Otherwise ``proofs.jsonl`` ties every exported
        entry to the checkpoint. ``attestation/`` is created empty for the caller. Every file is
        written streaming (the log is read a few MiB at a time), so memory does not grow with
        the log.
        """
        formats = {fmt} if isinstance(fmt, ExportFormat) else set(fmt)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise AuditLogError(f"export directory {out} is not empty")
        log = self._tenant(tenant)
        size, root = log.snapshot()
        if start < 0:
            raise AuditLogError(f"export start {start} is negative")
        start = min(start, size)
        note = self._sign_checkpoint(tenant, size, root)
        ranged = since is not None or until is not None or start > 0

        def selected() -> Iterator[tuple[int, bytes]]:
            for i, line in enumerate(log.iter_lines(size, start), start):
                if ranged and (
                    (since is not None and _line_time(line) < since)
                    or (until is not None and _line_time(line) >= until)
                ):
                    continue
                yield i, line

        files = [ENTRIES_FILE, CHECKPOINT_FILE, PUBKEY_FILE]
        count = 0
        with (out / ENTRIES_FILE).open("wb") as f:
            for _, line in selected():
                f.write(line + b"\n")
                count += 1
        if ranged:
            with (out / PROOFS_FILE).open("w", encoding="utf-8") as proofs:
                for i, _ in selected():
                    proof = log.inclusion_proof(i, size)
                    row = {
                        "index": i,
                        "leaf_hash": base64.b64encode(log.leaf_hash(i)).decode(),
                        "proof": [base64.b64encode(p).decode() for p in proof],
                    }
                    proofs.write(json.dumps(row, separators=(",", ":")) + "\n")
            files.append(PROOFS_FILE)
        else:
            (out / LEAF_HASHES_FILE).write_bytes(log.leaf_hashes(size))
            files.append(LEAF_HASHES_FILE)
        (out / CHECKPOINT_FILE).write_text(note, encoding="utf-8")
        (out / PUBKEY_FILE).write_text(self.vkey + "\n", encoding="utf-8")
        (out / ATTESTATION_DIR).mkdir()

        def rows() -> Iterator[tuple[int, bytes, AuditRecord]]:
            for i, line in selected():
                yield i, log.leaf_hash(i), AuditRecord.from_line(line)

        if ExportFormat.OCSF in formats:
            write_ocsf(out / "ocsf.jsonl", rows(), self.origin(tenant))
            files.append("ocsf.jsonl")
        if ExportFormat.CSV in formats:
            write_csv(out / "entries.csv", rows())
            files.append("entries.csv")
        return ExportResult(
            directory=out,
            tenant=tenant,
            tree_size=size,
            entry_count=count,
            checkpoint=note,
            files=tuple(files),
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop publishing, flush every tenant's queue, publish final checkpoints, close files.

        Never raises: one log's failure must not leave the others open.
        """
        self._stop.set()
        if self._publisher is not None:
            self._publisher.join()
        with self._lock:
            logs = list(self._logs.items())
            self._logs.clear()
        for tenant, log in logs:
            try:
                log.close()
            except OSError as exc:
                _log.error("closing the audit log of %s failed: %s", tenant, exc.strerror)
        for tenant, log in logs:
            try:
                self._publish(tenant, log)
            except (OSError, AuditLogError) as exc:
                _log.error("final audit checkpoint for %s failed: %s", tenant, exc)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
