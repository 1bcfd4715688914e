"""The client's side of a sealing session (protocol 1.4): keys, numbering, when to stop using it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from veil.sdk.protocol import MAX_SESSION_SEQ, SessionKeys

__all__ = ["ClientSession"]

# Stop using a session a little before the enclave would forget it, so a request in flight at
# the boundary is not refused (which would only cost a retry).
IDLE_MARGIN = 0.8


@dataclass
class ClientSession:
    """An open session with one attested enclave; ``take`` numbers requests, thread-safe."""

    keys: SessionKeys
    claims_digest: bytes
    idle_seconds: float
    last_used: float  # seconds (the client's clock)
    _seq: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def take(self, claims_digest: bytes, now: float) -> int | None:
        """The next request number, or ``None`` if this session should not be used any more
        (another attestation, idle too long, numbers used up)."""
        with self._lock:
            if (
                claims_digest != self.claims_digest
                or now - self.last_used > self.idle_seconds * IDLE_MARGIN
                or self._seq >= MAX_SESSION_SEQ
            ):
                return None
            self._seq += 1
            self.last_used = now
            return self._seq
