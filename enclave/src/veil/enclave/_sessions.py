"""Sealing sessions (protocol 1.4): one HPKE step per session instead of one per request.

A client asks for a session inside an ordinary HPKE-sealed request (``RequestBody.session_secret``);
once that request has opened and its API key checked, :class:`SessionTable` keeps the keys both
ends derive from the secret (``veil.sdk.protocol.session_keys``), bound to the tenant, the API
key's id, the attested claims and the receipt format. Later requests of the session are AES-GCM
only, numbered 1, 2, 3, ...: the number is the nonce and the replay guard (a sliding window, as
IPsec and DTLS keep one), so no request costs an asymmetric operation or a write to the shared
replay store.

Sessions live in the memory of the process that opened them and nowhere else: a worker process,
a replica or a restarted enclave that does not know a session refuses its requests with
``session-expired`` (nothing was processed) and the client opens a new one. The table is bounded
(``[limits] max_sessions``; the least recently used is dropped first) and a session unused for
``[limits] session_idle_seconds`` is gone.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.enclave._replay import ReplayError
from veil.sdk.errors import ProtocolError
from veil.sdk.protocol import MAX_SESSION_SEQ, SessionKeys, session_keys

__all__ = ["REPLAY_WINDOW", "Session", "SessionTable", "UnknownSessionError"]

# How far behind the highest sequence number a session still accepts a request (out of order,
# e.g. from concurrent threads of one client): 1024 numbers.
REPLAY_WINDOW = 1024


class UnknownSessionError(ProtocolError):
    """The request names a session this process does not hold (expired, dropped, elsewhere)."""


@dataclass
class Session:
    """One open session: its keys and who it belongs to. Only ``SessionTable`` makes these."""

    keys: SessionKeys
    request_aead: AESGCM
    tenant: str
    key_id: str
    claims_digest: bytes
    receipt_version: int
    last_used: float
    highest: int = 0  # the highest sequence number accepted
    seen: int = 0  # bit i set: highest - i was accepted (i < REPLAY_WINDOW)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def accept(self, seq: int) -> None:
        """Mark ``seq`` used; raise ``ReplayError`` if it was, or is too old to tell."""
        with self.lock:
            if seq > self.highest:
                shift = seq - self.highest
                self.seen = ((self.seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
                self.highest = seq
                return
            offset = self.highest - seq
            if offset >= REPLAY_WINDOW:
                raise ReplayError("session request number is behind the replay window")
            bit = 1 << offset
            if self.seen & bit:
                raise ReplayError("session request number was already used")
            self.seen |= bit


class SessionTable:
    """The sessions this process holds; thread-safe, bounded, idle ones expire."""

    def __init__(
        self,
        *,
        max_sessions: int,
        idle_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_sessions
        self._idle = idle_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()

    @property
    def idle_seconds(self) -> int:
        """What the client is told: whole seconds, at least 1."""
        return max(1, int(self._idle))

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def open(
        self,
        secret: bytes,
        *,
        tenant: str,
        key_id: str,
        claims_digest: bytes,
        receipt_version: int,
    ) -> SessionKeys:
        """Hold a new session keyed from ``secret`` (already authenticated by its request)."""
        keys = session_keys(secret, tenant=tenant, claims_digest=claims_digest)
        session = Session(
            keys=keys,
            request_aead=AESGCM(keys.request_key),
            tenant=tenant,
            key_id=key_id,
            claims_digest=claims_digest,
            receipt_version=receipt_version,
            last_used=self._clock(),
        )
        with self._lock:
            self._expire(session.last_used)
            # A secret sent twice (a replayed opening request cannot get here: the replay
            # store refuses it) opens the same session afresh: numbering starts over.
            self._sessions.pop(keys.session_id, None)
            while len(self._sessions) >= self._max:
                self._sessions.popitem(last=False)
            self._sessions[keys.session_id] = session
        return keys

    def find(self, session_id: bytes, *, tenant: str, claims_digest: bytes, seq: int) -> Session:
        """The live session ``session_id`` for this tenant and attestation; refresh its use."""
        if not 1 <= seq <= MAX_SESSION_SEQ:
            raise ProtocolError(f"session request number must be in 1..{MAX_SESSION_SEQ}")
        now = self._clock()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and now - session.last_used > self._idle:
                del self._sessions[session_id]
                session = None
            if (
                session is None
                or session.tenant != tenant
                or session.claims_digest != claims_digest
            ):
                raise UnknownSessionError("unknown or expired session: open a new one")
            session.last_used = now
            self._sessions.move_to_end(session_id)
            return session

    def drop(self, session_id: bytes) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def _expire(self, now: float) -> None:
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_used <= self._idle:
                return
            self._sessions.popitem(last=False)
