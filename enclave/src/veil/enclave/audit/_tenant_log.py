"""One tenant's append-only log file with group commit, crash recovery and its Merkle tree.

File layout: ``<dir>/entries.jsonl`` holds one canonical JSON record per line; each line (without
its newline) is a Merkle leaf. ``append`` returns a leaf index only after the line is on disk
(``fsync``). Group commit without a writer thread (leader/follower): an appender that finds no
flush in progress leads, in its own thread, and writes its line with one ``write`` and one
``fsync``, so a lone appender never waits for another thread. Appenders that arrive meanwhile
queue into the next batch; the first of them leads it once the flush before it is on disk, and
writes every line queued by then in one ``write`` and one ``fsync``; the others wait for it. So
concurrent appenders share fsyncs, and batches reach the file one at a time, in index order.

A write or fsync error (ENOSPC, EIO, ...) fails the batch in flight with ``AuditLogError`` and
nothing else: the file is cut back to its last durable length and that length is made durable,
and the next batch tries again, so the log resumes by itself once the disk has room. After a
failed ``fsync`` the state of the page cache is unknown, so the batch is never retried in place:
it is cut off and reported failed. If the cut itself fails, every later batch re-cuts (and checks
the file's length) before it writes, so an acknowledged line never sits after unacknowledged
bytes. Reads (size, roots, proofs, lines) use the in-memory tree and the durable prefix of the
file, so they keep working while appends fail.

``on_commit`` (optional) runs once per batch, on its leader's thread, once the batch is durable
and before the next batch is written (so calls never overlap and come in index order), with the
batch's first index, leaf hashes and the ``extra`` of each appender; each appender gets its own
result. The audit log signs one batch of receipts there: one signature per fsync, not per call.

``on_disk_full`` (optional) is called when a write fails because the disk is full; if it frees
space (the audit headroom reserve) and returns ``True``, the batch is cut back and written once
more before it is reported failed.

On open, a torn tail (bytes after the last newline, left by a crash mid-write) is cut back to the
last complete record and logged; it is never kept silently. The tree is rebuilt from the file and
checked against the last persisted checkpoint, so a log that lost or changed checkpointed entries
refuses to open.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from veil.enclave._disk import is_disk_full
from veil.enclave._files import write_atomic
from veil.sdk.audit import Checkpoint, MerkleTree, SignedNote, hash_leaf
from veil.sdk.errors import AuditLogError

__all__ = ["FileOps", "OnCommit", "OsFileOps", "TenantLog"]

_log = logging.getLogger("veil.audit")
ENTRIES = "entries.jsonl"
CHECKPOINT = "checkpoint"
_READ_CHUNK = 1 << 22
_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


class FileOps(Protocol):
    """The system calls that make records durable (injectable for tests).

    ``fsync`` must make the data written and the file's size durable (``fdatasync`` does).
    """

    def write(self, fd: int, data: bytes) -> int: ...

    def fsync(self, fd: int) -> None: ...

    def truncate(self, fd: int, length: int) -> None: ...


class OsFileOps:
    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        # The log is only appended to and cut: fdatasync flushes the data and the size (what a
        # read back needs), skipping only timestamps. macOS has no fdatasync.
        _datasync(fd)

    def truncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)


# Called by a batch's leader once the batch is durable: (first leaf index, leaf hashes, the
# ``extra`` each appender passed) -> one result per line, handed back to its appender. The audit
# log signs one receipt batch here (receipt v2).
OnCommit = Callable[[int, list[bytes], list[object]], list[object]]


@dataclass
class _Batch:
    """Lines committed together; the appender of the first one leads (writes and fsyncs) them."""

    lines: list[bytes] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)
    extras: list[object] = field(default_factory=list)
    results: list[object] = field(default_factory=list)
    turn: threading.Event = field(default_factory=threading.Event)  # the leader may write now
    done: threading.Event = field(default_factory=threading.Event)  # results or error are set
    first_index: int = -1
    error: AuditLogError | None = None


class TenantLog:
    """Append-only, durable, Merkle-tree-backed log for one tenant (thread-safe)."""

    def __init__(
        self,
        directory: Path,
        *,
        group_commit: bool = True,
        file_ops: FileOps | None = None,
        on_disk_full: Callable[[], bool] | None = None,
        on_commit: OnCommit | None = None,
    ) -> None:
        self.directory = directory
        self._on_commit = on_commit
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / ENTRIES
        self._ops: FileOps = file_ops or OsFileOps()
        self._group_commit = group_commit
        self._tree = MerkleTree()
        self._ends = array("Q")  # byte offset just past each line's newline
        self._tree_lock = threading.Lock()  # guards _tree and _ends
        self._queue_cv = threading.Condition(threading.Lock())  # guards the three below
        self._pending = _Batch()  # lines queued while a flush is in progress
        self._flushing = False  # a leader holds the turn; invariant: _pending empty if not
        self._closing = False
        self._on_disk_full = on_disk_full
        self._last_error: AuditLogError | None = None  # the latest batch's failure, if it failed
        self._dirty = False  # bytes past the durable length may be in the file: cut first
        self._io_lock = threading.Lock()  # serialises file I/O with close (and one-fsync mode)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._durable = self._recover()
            self._check_against_checkpoint()
        except BaseException:
            os.close(self._fd)
            raise

    # -- recovery ------------------------------------------------------------------------------

    def _recover(self) -> int:
        """Rebuild the tree from the file; cut a torn tail. Returns the durable length."""
        offset = 0
        carry = b""
        with open(self.path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                data = carry + chunk
                start = 0
                while (nl := data.find(b"\n", start)) >= 0:
                    line = data[start:nl]
                    if not (line.startswith(b"{") and line.endswith(b"}")):
                        raise AuditLogError(
                            f"audit log {self.path} line {self._tree.size + 1} is corrupt; "
                            "refusing to open it"
                        )
                    self._tree.append_hash(hash_leaf(line))
                    offset += nl + 1 - start
                    self._ends.append(offset)
                    start = nl + 1
                carry = data[start:]
        if carry:
            _log.warning(
                "audit log %s: cutting a torn tail of %d bytes after record %d (crash mid-write)",
                self.path,
                len(carry),
                self._tree.size,
            )
            os.ftruncate(self._fd, offset)
            os.fsync(self._fd)
        return offset

    def _check_against_checkpoint(self) -> None:
        path = self.directory / CHECKPOINT
        if not path.exists():
            return
        try:
            checkpoint = Checkpoint.from_text(SignedNote.from_text(path.read_bytes()).text)
        except AuditLogError as exc:
            raise AuditLogError(f"audit log checkpoint {path} is malformed: {exc}") from exc
        if checkpoint.size > self._tree.size:
            raise AuditLogError(
                f"audit log {self.path} has {self._tree.size} records but its last checkpoint "
                f"signed {checkpoint.size}: checkpointed records were lost"
            )
        if self._tree.root(checkpoint.size) != checkpoint.root_hash:
            raise AuditLogError(
                f"audit log {self.path} does not match its last checkpoint at size "
                f"{checkpoint.size}: records were altered"
            )

    # -- appending -----------------------------------------------------------------------------

    def append_line(self, line: bytes) -> int:
        """Append one record line (no newline); return its index once it is durable."""
        return self.append(line)[0]

    def append(self, line: bytes, extra: object = None) -> tuple[int, object]:
        """Append one record line; once durable, return its index and ``on_commit``'s result.

        ``extra`` travels with the line to ``on_commit``, which runs once per durable batch on
        the thread of the batch's leader (the result is None without an ``on_commit``).
        """
        if b"\n" in line:
            raise AuditLogError("an audit record line must not contain a newline")
        leaf = hash_leaf(line)
        if not self._group_commit:
            return self._append_now(line, leaf, extra)
        with self._queue_cv:
            if self._closing:
                raise AuditLogError(f"audit log {self.directory.name} is closed")
            batch = self._pending
            position = len(batch.lines)
            batch.lines.append(line)
            batch.hashes.append(leaf)
            batch.extras.append(extra)
            lead_now = not self._flushing  # then the queue was empty: this is position 0
            if lead_now:
                self._flushing = True
                self._pending = _Batch()
        if position == 0:
            try:
                if not lead_now:
                    self._take_turn(batch)
            except BaseException:  # interrupted: still lead, the batch's others wait for it
                self._take_turn(batch)
                self._lead(batch)
                raise
            self._lead(batch)
        else:
            batch.done.wait()
        if batch.error is not None:
            raise batch.error
        result = batch.results[position] if batch.results else None
        return batch.first_index + position, result

    def _append_now(self, line: bytes, leaf: bytes, extra: object) -> tuple[int, object]:
        with self._io_lock:
            if self._closing:
                raise AuditLogError(f"audit log {self.directory.name} is closed")
            self._persist([line])
            index = self._commit([line], [leaf])
        results = self._committed(index, [leaf], [extra])
        return index, results[0] if results else None

    def _lead(self, batch: _Batch) -> None:
        """Write and fsync ``batch`` (this thread holds the turn), run on_commit, pass the turn.

        Whatever happens, the turn is passed on and the batch's appenders are answered.
        """
        try:
            try:
                with self._io_lock:
                    self._persist(batch.lines)
                    batch.first_index = self._commit(batch.lines, batch.hashes)
                batch.results = self._committed(batch.first_index, batch.hashes, batch.extras)
            finally:
                self._pass_turn()
        except AuditLogError as exc:
            batch.error = exc
        except Exception as exc:  # never leave appenders waiting
            batch.error = self._error(exc)
        except BaseException:
            batch.error = AuditLogError(
                f"audit log {self.directory.name}: the append was interrupted"
            )
            raise
        finally:
            batch.done.set()

    def _pass_turn(self) -> None:
        """Hand the turn to the batch queued meanwhile, if any; else no flush is in progress."""
        with self._queue_cv:
            queued = self._pending
            if not queued.lines:
                self._flushing = False
                self._queue_cv.notify_all()  # close() waits for this
                return
        queued.turn.set()

    def _take_turn(self, batch: _Batch) -> None:
        """Wait for the turn, then close ``batch``: lines queued from now on go to the next one.

        The batch stays open until its leader runs, so it takes every line queued by then.
        """
        batch.turn.wait()
        with self._queue_cv:
            if self._pending is batch:  # (a second call, after an interrupt, changes nothing)
                self._pending = _Batch()

    def _committed(self, first: int, hashes: list[bytes], extras: list[object]) -> list[object]:
        """Run ``on_commit`` for a durable batch; its failure fails the batch's appenders."""
        if self._on_commit is None:
            return []
        try:
            results = self._on_commit(first, hashes, extras)
        except AuditLogError:
            raise
        except Exception as exc:  # records are durable, but their appenders get no answer
            _log.exception("audit log %s: post-commit step failed", self.path)
            raise AuditLogError(
                f"audit log {self.directory.name}: the batch was recorded but not receipted"
            ) from exc
        if len(results) != len(hashes):
            raise AuditLogError("post-commit step returned the wrong number of results")
        return results

    def _persist(self, lines: list[bytes]) -> None:
        """Make ``lines`` durable after the durable prefix, or raise with the file cut back."""
        data = b"".join(line + b"\n" for line in lines)
        retried = False
        while True:
            try:
                self._cut_if_dirty()
                self._dirty = True  # from here until the fsync returns, the tail is unknown
                self._write_all(data)
                self._ops.fsync(self._fd)
            except Exception as exc:  # OSError in practice; anything else must not hang appenders
                self._cut_back()
                if not retried and is_disk_full(exc) and self._release_space():
                    retried = True
                    continue
                self._last_error = self._error(exc)
                raise self._last_error from exc
            self._dirty = False
            if self._last_error is not None:
                _log.warning("audit log %s: appends succeed again", self.path)
                self._last_error = None
            return

    def _release_space(self) -> bool:
        try:
            return self._on_disk_full is not None and self._on_disk_full()
        except Exception:  # a failing hook must not turn into a lost batch
            _log.exception("audit log %s: releasing disk headroom failed", self.path)
            return False

    def _cut_if_dirty(self) -> None:
        """Before writing: the file must end exactly at the durable length."""
        if not self._dirty and os.fstat(self._fd).st_size == self._durable:
            return
        self._ops.truncate(self._fd, self._durable)
        self._ops.fsync(self._fd)
        self._dirty = False

    def _cut_back(self) -> None:
        """After a failed write/fsync: drop unacknowledged bytes (the next batch re-cuts if not)."""
        try:
            self._ops.truncate(self._fd, self._durable)
            self._ops.fsync(self._fd)
        except OSError as exc:
            _log.error(
                "audit log %s: could not cut back to %d bytes (%s); the next append re-cuts",
                self.path,
                self._durable,
                exc.strerror or exc,
            )
            self._dirty = True
        else:
            self._dirty = False

    def _error(self, exc: Exception) -> AuditLogError:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        _log.error(
            "audit log %s: append failed (%s); it is retried with the next one", self.path, reason
        )
        return AuditLogError(
            f"audit log {self.directory.name} is unavailable: write/fsync failed ({reason}); "
            "the record was not written, retry later"
        )

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = self._ops.write(self._fd, bytes(view))
            if written <= 0:
                raise OSError(errno.EIO, "write made no progress")
            view = view[written:]

    def _commit(self, lines: list[bytes], hashes: list[bytes]) -> int:
        with self._tree_lock:
            first = self._tree.size
            offset = self._durable
            for line, leaf in zip(lines, hashes, strict=True):
                self._tree.append_hash(leaf)
                offset += len(line) + 1
                self._ends.append(offset)
            self._durable = offset
        return first

    # -- reading -------------------------------------------------------------------------------

    @property
    def failed(self) -> bool:
        """Whether the latest append failed (the next one tries again)."""
        return self._last_error is not None

    @property
    def size(self) -> int:
        with self._tree_lock:
            return self._tree.size

    def snapshot(self) -> tuple[int, bytes]:
        """(size, root) of the durable tree, read atomically."""
        with self._tree_lock:
            return self._tree.size, self._tree.root()

    def root(self, size: int | None = None) -> bytes:
        with self._tree_lock:
            return self._tree.root(size)

    def leaf_hash(self, index: int) -> bytes:
        with self._tree_lock:
            return self._tree.leaf_hash(index)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        with self._tree_lock:
            return self._tree.inclusion_proof(index, size)

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        with self._tree_lock:
            return self._tree.consistency_proof(size1, size2)

    def leaf_hashes(self, size: int) -> bytes:
        with self._tree_lock:
            return self._tree.leaf_hashes(size)

    def iter_lines(self, size: int, start: int = 0) -> Iterator[bytes]:
        """Durable lines ``start..size-1`` (without newlines), read a few MiB at a time."""
        with self._tree_lock:
            if not 0 <= start <= size <= self._tree.size:
                raise AuditLogError(f"range {start}..{size} is outside 0..{self._tree.size}")
            offset = self._ends[start - 1] if start else 0
            end = self._ends[size - 1] if size else 0
        fd = os.open(self.path, os.O_RDONLY)  # its own descriptor: close() may run meanwhile
        try:
            carry = b""
            while offset < end:
                chunk = os.pread(fd, min(_READ_CHUNK, end - offset), offset)
                if not chunk:
                    raise AuditLogError(f"audit log {self.path} is shorter than its durable length")
                offset += len(chunk)
                parts = (carry + chunk).split(b"\n")
                carry = parts.pop()
                yield from parts
            if carry:
                raise AuditLogError(f"audit log {self.path} does not end its durable part cleanly")
        finally:
            os.close(fd)

    def write_checkpoint(self, note: str) -> None:
        """Persist a signed checkpoint atomically (temp file, fsync, rename, fsync dir)."""
        write_atomic(self.directory / CHECKPOINT, note.encode("utf-8"))

    def close(self) -> None:
        """Refuse new appends, wait until every queued one is on disk, and close the file."""
        with self._queue_cv:
            self._closing = True
            while self._flushing:
                self._queue_cv.wait()
        with self._io_lock:
            if self._fd >= 0:
                if self._dirty:  # a failed cut-back: one more try, so a restart finds no tail
                    self._cut_back()
                os.close(self._fd)
                self._fd = -1
