"""Replay protection: each request id is accepted once, and only inside a time window.

A :class:`ReplayStore` is where accepted ids are remembered. One process uses
:class:`MemoryReplayStore`; worker processes of one ``veil serve`` share a
:class:`SqliteReplayStore` (one file, WAL), so an id accepted by one worker is refused by
every other; replicas share a PostgreSQL one (``veil.enclave`` scale-out). All implement the
same atomic insert-if-absent ``check``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

from veil.sdk.errors import ProtocolError

__all__ = [
    "MemoryReplayStore",
    "ReplayError",
    "ReplayGuard",
    "ReplayStore",
    "SqliteReplayStore",
    "StaleRequestError",
    "check_fresh",
    "expiry_ms",
]


class ReplayError(ProtocolError):
    """A request id was seen before."""


class StaleRequestError(ProtocolError):
    """A request's timestamp is outside the accepted window."""


@runtime_checkable
class ReplayStore(Protocol):
    """Remembers accepted request ids for as long as their timestamps are acceptable.

    ``check`` is atomic insert-if-absent: it raises ``StaleRequestError`` when
    ``|timestamp_ms - now_ms| > window``, ``ReplayError`` when ``request_id`` was accepted before
    (by any process sharing the store) and has not expired, ``ProtocolError`` when the store
    cannot take it (full, unreachable: fail closed); otherwise it records the id with expiry
    ``timestamp_ms + window + 1`` (``expiry_ms``) and returns. An id may be forgotten once
    ``now_ms >= expiry``: after that its timestamp alone refuses it. ``close`` releases
    connections; ``check`` after ``close`` is not allowed.
    """

    @property
    def window_ms(self) -> int: ...

    def check(self, request_id: bytes, timestamp_ms: int, now_ms: int) -> None: ...

    def close(self) -> None: ...


def check_fresh(timestamp_ms: int, now_ms: int, window_ms: int) -> None:
    """Raise ``StaleRequestError`` unless ``|timestamp - now| <= window``."""
    skew = timestamp_ms - now_ms
    if abs(skew) > window_ms:
        raise StaleRequestError(
            f"request timestamp is {skew / 1000:+.0f} s from the enclave clock "
            f"(window ±{window_ms // 1000} s)"
        )


def expiry_ms(timestamp_ms: int, window_ms: int) -> int:
    """When an id may be forgotten: it must be kept while ``now <= timestamp + window``."""
    return timestamp_ms + window_ms + 1


class MemoryReplayStore:
    """The ids of one process, in memory.

    A request is accepted only while ``|timestamp - now| <= window``, and the timestamp is bound
    to the request by the seal, so an id need be kept only until its own ``timestamp + window``:
    after that a replay is refused for its age. Ids sit in dicts (denser than sets) bucketed by
    that expiry (``window / 4`` per bucket), and a whole bucket is dropped once every id in it has
    expired: memory is bounded by the request rate times the window, 80-100 bytes per id.
    """

    def __init__(self, window_ms: int, *, max_entries: int = 1_000_000) -> None:
        self._window_ms = window_ms
        self._max_entries = max_entries
        self._bucket_ms = max(1, window_ms // 4)
        self._buckets: dict[int, dict[bytes, None]] = {}  # expiry // bucket_ms -> ids
        self._count = 0
        self._lock = threading.Lock()

    @property
    def window_ms(self) -> int:
        return self._window_ms

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def check(self, request_id: bytes, timestamp_ms: int, now_ms: int) -> None:
        """Accept ``request_id`` once; raise ``StaleRequestError`` or ``ReplayError`` otherwise."""
        check_fresh(timestamp_ms, now_ms, self._window_ms)
        bucket = expiry_ms(timestamp_ms, self._window_ms) // self._bucket_ms
        with self._lock:
            self._expire(now_ms)
            if any(request_id in ids for ids in self._buckets.values()):
                raise ReplayError("request id was already used: replay refused")
            if self._count >= self._max_entries:
                raise ProtocolError("too many requests in the replay window; retry later")
            self._buckets.setdefault(bucket, {})[bytes(request_id)] = None
            self._count += 1

    def close(self) -> None:
        with self._lock:
            self._buckets.clear()
            self._count = 0

    def _expire(self, now_ms: int) -> None:
        """Drop the buckets whose every expiry (< (bucket + 1) * bucket_ms) is <= now."""
        for bucket in [b for b in self._buckets if (b + 1) * self._bucket_ms <= now_ms + 1]:
            self._count -= len(self._buckets.pop(bucket))


ReplayGuard = MemoryReplayStore  # the name before stores were pluggable


_SCHEMA = "CREATE TABLE IF NOT EXISTS seen (id BLOB PRIMARY KEY, expires_ms INTEGER NOT NULL)"
# Insert, or take over an expired row of the same id (a forgotten id is a new one): no row
# changes exactly when a live row holds the id, i.e. a replay.
_INSERT = (
    "INSERT INTO seen (id, expires_ms) VALUES (?, ?) "
    "ON CONFLICT (id) DO UPDATE SET expires_ms = excluded.expires_ms "
    "WHERE seen.expires_ms <= ?"
)


class SqliteReplayStore:
    """The ids of every worker process of one enclave, in one SQLite file (WAL).

    One table ``seen(id PRIMARY KEY, expires_ms)``; ``check`` is one ``BEGIN IMMEDIATE``
    transaction (the database's write lock serializes workers): expired rows are deleted in it
    every ``window / 4``, then the id is inserted unless a live row holds it. Each process opens
    its own connection on first use (a connection never crosses a ``fork``). ``synchronous =
    NORMAL``: a commit survives the crash of any process; the store need not survive a reboot,
    because the key epochs a request can be sealed to do not (they live in memory).
    """

    def __init__(
        self,
        path: Path,
        window_ms: int,
        *,
        max_entries: int = 10_000_000,
        busy_timeout_ms: int = 10_000,
    ) -> None:
        self._path = path
        self._window_ms = window_ms
        self._max_entries = max_entries
        self._busy_timeout_ms = busy_timeout_ms
        self._sweep_ms = max(1, window_ms // 4)
        self._next_sweep = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._closed = False

    @classmethod
    def create(cls, path: Path, window_ms: int, **kwargs: int) -> SqliteReplayStore:
        """A fresh store at ``path`` (what an earlier run left is dropped) with its schema."""
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        store = cls(path, window_ms, **kwargs)
        with store._lock:
            store._connection().close()  # the schema now exists; no connection crosses a fork
            store._conn = None
        return store

    @property
    def window_ms(self) -> int:
        return self._window_ms

    @property
    def path(self) -> Path:
        return self._path

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise ProtocolError("the replay store is closed")
        if self._conn is None or self._pid != os.getpid():
            # after a fork the parent's connection is not ours to use (or to close)
            conn = sqlite3.connect(
                self._path, isolation_level=None, check_same_thread=False, timeout=0
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(_SCHEMA)
            self._conn, self._pid = conn, os.getpid()
        return self._conn

    def check(self, request_id: bytes, timestamp_ms: int, now_ms: int) -> None:
        """Accept ``request_id`` once across every process; raise as ``ReplayStore`` says."""
        check_fresh(timestamp_ms, now_ms, self._window_ms)
        expires = expiry_ms(timestamp_ms, self._window_ms)
        with self._lock:
            try:
                conn = self._connection()
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if now_ms >= self._next_sweep:
                        conn.execute("DELETE FROM seen WHERE expires_ms <= ?", (now_ms,))
                        self._next_sweep = now_ms + self._sweep_ms
                        (rows,) = conn.execute("SELECT count(*) FROM seen").fetchone()
                        if rows >= self._max_entries:
                            raise ProtocolError(
                                "too many requests in the replay window; retry later"
                            )
                    changed = conn.execute(_INSERT, (bytes(request_id), expires, now_ms)).rowcount
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:  # busy past the timeout, I/O error: fail closed
                raise ProtocolError("the replay store is unavailable; retry later") from exc
        if changed == 0:
            raise ReplayError("request id was already used: replay refused")

    def __len__(self) -> int:
        with self._lock:
            (rows,) = self._connection().execute("SELECT count(*) FROM seen").fetchone()
            return int(rows)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None
            self._closed = True
