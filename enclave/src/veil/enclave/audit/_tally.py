"""Aggregated records for calls that anyone can make: refusals and attestations.

A caller without an API key must not be able to grow a tenant's log (or the system log) one
fsynced line per call. ``EventTally`` counts such events in memory per (log, event, resource)
and writes one record per key and window (``window_seconds``) from its own thread::

    {"event": "auth_failure", "outcome": "denied", "tenant": "acme", "resource": "<method>",
     "origin": "enclave/tally", "details": {"aggregated": true, "count": 5000,
     "first_time": "...Z", "last_time": "...Z", "window_ms": 60000,
     "distinct_peers": 3, "distinct_claims": 1, "distinct_capped": false}}

Peers and claimed tenant names are only counted (as keyed digests in a set capped at
``max_distinct`` members), never written. A flood therefore costs a dictionary update per call
and at most one record per (log, event, resource) per window, whatever the call rate. A window
whose record cannot be written (the log is unavailable) is kept and merged into the next one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from veil.enclave.audit._log import AuditLog
from veil.sdk.audit import AuditRecord, EventType, Outcome
from veil.sdk.audit.records import format_time
from veil.sdk.errors import AuditLogError

__all__ = ["EventTally"]

_log = logging.getLogger("veil.audit")
ORIGIN = "enclave/tally"


@dataclass
class _Window:
    outcome: Outcome
    first: datetime
    last: datetime
    count: int = 0
    peers: set[str] = field(default_factory=set)
    claims: set[str] = field(default_factory=set)
    capped: bool = False

    def add(self, when: datetime, peer: str, claim: str | None, cap: int) -> None:
        self.count += 1
        self.last = max(self.last, when)
        self.first = min(self.first, when)
        for members, value in ((self.peers, peer), (self.claims, claim)):
            if value is None or value in members:
                continue
            if len(members) < cap:
                members.add(value)
            else:
                self.capped = True

    def merge(self, other: _Window, cap: int) -> None:
        self.count += other.count
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)
        for mine, theirs in ((self.peers, other.peers), (self.claims, other.claims)):
            for value in theirs:
                if len(mine) < cap:
                    mine.add(value)
                elif value not in mine:
                    self.capped = True
        self.capped |= other.capped


_Key = tuple[str, EventType, str]


class EventTally:
    """Counts events per (log, event, resource); one aggregated record per key per window."""

    def __init__(
        self,
        audit: AuditLog,
        *,
        clock: Callable[[], datetime],
        window_seconds: float,
        digest: Callable[[bytes], str],
        max_distinct: int = 1024,
        background: bool = True,
    ) -> None:
        if window_seconds <= 0:
            raise AuditLogError("the tally window must be positive")
        self._audit = audit
        self._clock = clock
        self._window = window_seconds
        self._digest = digest
        self._cap = max_distinct
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._windows: dict[_Key, _Window] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="veil-audit-tally", daemon=True)
            self._thread.start()

    def note(
        self,
        *,
        tenant: str,
        event: EventType,
        resource: str,
        peer: str,
        outcome: Outcome = Outcome.SUCCESS,
        claim: str | None = None,
    ) -> None:
        """Count one event; ``claim`` (e.g. an unknown tenant's name) is only counted, digested."""
        when = self._clock()
        peer_digest = self._digest(b"peer\0" + peer.encode())
        claim_digest = None if claim is None else self._digest(b"claim\0" + claim.encode())
        key = (tenant, event, resource)
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(outcome=outcome, first=when, last=when)
            window.add(when, peer_digest, claim_digest, self._cap)

    def pending(self) -> int:
        """Events counted but not yet written."""
        with self._lock:
            return sum(w.count for w in self._windows.values())

    def flush(self) -> int:
        """Write one record per counted key; returns the number written. Never raises for I/O."""
        with self._flush_lock:
            with self._lock:
                windows, self._windows = self._windows, {}
            written = 0
            for key, window in windows.items():
                try:
                    self._audit.append(self._record(key, window))
                except (AuditLogError, OSError) as exc:
                    _log.error("aggregated audit record not written yet (%s); kept", exc)
                    with self._lock:
                        newer = self._windows.get(key)
                        if newer is not None:
                            window.merge(newer, self._cap)
                        self._windows[key] = window
                    continue
                written += 1
            return written

    def _record(self, key: _Key, window: _Window) -> AuditRecord:
        tenant, event, resource = key
        details: dict[str, object] = {
            "aggregated": True,
            "count": window.count,
            "first_time": format_time(window.first),
            "last_time": format_time(window.last),
            "window_ms": round(self._window * 1000),
            "distinct_peers": len(window.peers),
            "distinct_capped": window.capped,
        }
        if window.claims:
            details["distinct_claims"] = len(window.claims)
        return AuditRecord.create(
            now=self._clock(),
            event=event,
            outcome=window.outcome,
            tenant=tenant,
            origin=ORIGIN,
            resource=resource,
            details=details,
        )

    def _loop(self) -> None:
        while not self._stop.wait(self._window):
            self.flush()

    def close(self) -> None:
        """Stop the thread and write what was counted (best effort; never raises)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()
