"""Replay protection: each request id is accepted once, and only inside a time window."""

from __future__ import annotations

import threading
from collections import OrderedDict

from sdk._errors import ProtocolError

__all__ = ["ReplayError", "ReplayGuard", "StaleRequestError"]


class ReplayError(ProtocolError):
    """A request id was seen before."""


class StaleRequestError(ProtocolError):
    """A request's timestamp is outside the accepted window."""


class ReplayGuard:
    """Remembers request ids for the window (plus skew) and refuses timestamps outside it.

    A request older than the window is refused for its age, so ids need only be kept as long as
    the window lasts: memory is bounded by the request rate times the window.
    """

    def __init__(self, window_ms: int, *, max_entries: int = 1_000_000) -> None:
        self._window_ms = window_ms
        self._max_entries = max_entries
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # id -> expiry (ms), insertion order
        self._lock = threading.Lock()

    def check(self, request_id: bytes, timestamp_ms: int, now_ms: int) -> None:
        """Accept ``request_id`` once; raise ``StaleRequestError`` or ``ReplayError`` otherwise."""
        skew = timestamp_ms - now_ms
        if abs(skew) > self._window_ms:
            raise StaleRequestError(
                f"request timestamp is {skew / 1000:+.0f} s from the enclave clock "
                f"(window ±{self._window_ms // 1000} s)"
            )
        with self._lock:
            self._expire(now_ms)
            if request_id in self._seen:
                raise ReplayError("request id was already used: replay refused")
            if len(self._seen) >= self._max_entries:
                raise ProtocolError("too many requests in the replay window; retry later")
            self._seen[request_id] = now_ms + 2 * self._window_ms

    def _expire(self, now_ms: int) -> None:
        while self._seen:
            oldest, expiry = next(iter(self._seen.items()))
            if expiry > now_ms:
                break
            del self._seen[oldest]
