"""State shared by replicas in PostgreSQL: the connection pool and the replay guard.

What the database holds is metadata only, never a key or a plaintext (docs/SCALE-OUT.md, 3.4):
request ids (16 random bytes) with their expiry, and (``veil.privacy.PostgresBudgetLedger``)
privacy charges per tenant and dataset digest.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from veil.enclave._errors import Overloaded
from veil.enclave._replay import ReplayError, check_fresh, expiry_ms
from veil.sdk.errors import ConfigError

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresPool", "PostgresReplayStore", "StateUnavailable"]

_REPLAY_SCHEMA = """
CREATE TABLE IF NOT EXISTS veil_replay (
    id BYTEA PRIMARY KEY,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS veil_replay_expiry ON veil_replay (expires_ms);
"""
# DDL of several replicas starting at once is serialized by this advisory lock (any constant).
_SCHEMA_LOCK = 0x7665696C


class StateUnavailable(Overloaded):
    """The shared database could not be reached or failed: the call is refused, retry later."""


class PostgresPool:
    """A few connections to one PostgreSQL database, shared by threads.

    Each ``transaction()`` borrows a connection for one transaction (committed on success,
    rolled back on error); a connection that failed is discarded and replaced on the next use.
    Database errors become ``StateUnavailable`` (one line, no SQL or parameters in it).
    """

    def __init__(self, url: str, *, size: int = 8, connect_timeout: float = 5.0) -> None:

        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("the database URL must be a postgresql:// URL")
        self._url = url
        self._timeout = connect_timeout
        self._idle: queue.LifoQueue[psycopg.Connection[tuple[object, ...]]] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._closed = False
        self._pid = os.getpid()
        with self.transaction() as conn:  # fail at start, not at the first request
            conn.execute("SELECT 1")

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        import psycopg

        return psycopg.connect(self._url, connect_timeout=max(1, int(self._timeout)))

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        import psycopg

        if self._closed:
            raise StateUnavailable("shared state is closed")
        if self._pid != os.getpid():  # after a fork the parent's connections are not ours
            self._idle = queue.LifoQueue()
            self._pid = os.getpid()
        self._slots.acquire()
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
            with conn.transaction():
                yield conn
        except psycopg.Error as exc:
            if conn is not None:
                conn.close()
                conn = None
            raise StateUnavailable(f"shared state failed: {type(exc).__name__}") from exc
        finally:
            if conn is not None and not conn.closed:
                self._idle.put(conn)
            self._slots.release()

    def migrate(self, schema: str) -> None:
        """Create tables if absent, once across replicas starting together."""
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in filter(str.strip, schema.split(";")):
                conn.execute(statement.encode())

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class PostgresReplayStore:
    """A ``ReplayStore`` over a shared table: an id accepted by one replica is refused by all.

    ``check`` is one transaction: every ``window / 4`` the expired rows are deleted, then one
    ``INSERT ... ON CONFLICT`` inserts the id or takes over an expired row of it; no row
    changed means a live row holds the id, taken by this replica or another: a replay. The row
    is committed before the request is served, so it outlives a crash of the replica (the key
    epochs a request is sealed to outlive any one replica).
    """

    def __init__(self, pool: PostgresPool, window_ms: int) -> None:
        self._pool = pool
        self._window_ms = window_ms
        pool.migrate(_REPLAY_SCHEMA)
        self._sweep_lock = threading.Lock()
        self._next_sweep_ms = 0

    @property
    def window_ms(self) -> int:
        return self._window_ms

    def __len__(self) -> int:
        with self._pool.transaction() as conn:
            row = conn.execute("SELECT count(*) FROM veil_replay").fetchone()
        return int(str(row[0])) if row else 0

    def check(self, request_id: bytes, timestamp_ms: int, now_ms: int) -> None:
        check_fresh(timestamp_ms, now_ms, self._window_ms)
        sweep = False
        with self._sweep_lock:
            if now_ms >= self._next_sweep_ms:
                self._next_sweep_ms = now_ms + max(1, self._window_ms // 4)
                sweep = True
        with self._pool.transaction() as conn:
            if sweep:
                conn.execute("DELETE FROM veil_replay WHERE expires_ms <= %s", (now_ms,))
            cur = conn.execute(
                "INSERT INTO veil_replay (id, expires_ms) VALUES (%s, %s) "
                "ON CONFLICT (id) DO UPDATE SET expires_ms = excluded.expires_ms "
                "WHERE veil_replay.expires_ms <= %s",
                (bytes(request_id), expiry_ms(timestamp_ms, self._window_ms), now_ms),
            )
            changed = cur.rowcount
        if changed != 1:
            raise ReplayError("request id was already used: replay refused")

    def close(self) -> None:
        """The pool is the replica's; it closes it."""
