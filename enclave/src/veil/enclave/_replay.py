"""Replay protection: each request id is accepted once, and only inside a time window."""

from __future__ import annotations

import threading

from veil.sdk.errors import ProtocolError

__all__ = ["ReplayError", "ReplayGuard", "StaleRequestError"]


class ReplayError(ProtocolError):
    """A request id was seen before."""


class StaleRequestError(ProtocolError):
    """A request's timestamp is outside the accepted window."""


class ReplayGuard:
    """Remembers request ids while their timestamps are acceptable and refuses timestamps outside.

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

    def __len__(self) -> int:
        with self._lock:
            return self._count

    def check(self, request_id: bytes, timestamp_ms: int, now_ms: int) -> None:
        """Accept ``request_id`` once; raise ``StaleRequestError`` or ``ReplayError`` otherwise."""
        skew = timestamp_ms - now_ms
        if abs(skew) > self._window_ms:
            raise StaleRequestError(
                f"request timestamp is {skew / 1000:+.0f} s from the enclave clock "
                f"(window ±{self._window_ms // 1000} s)"
            )
        # the id must be kept while ``now <= timestamp + window``: it expires one ms later
        bucket = (timestamp_ms + self._window_ms + 1) // self._bucket_ms
        with self._lock:
            self._expire(now_ms)
            if any(request_id in ids for ids in self._buckets.values()):
                raise ReplayError("request id was already used: replay refused")
            if self._count >= self._max_entries:
                raise ProtocolError("too many requests in the replay window; retry later")
            self._buckets.setdefault(bucket, {})[bytes(request_id)] = None
            self._count += 1

    def _expire(self, now_ms: int) -> None:
        """Drop the buckets whose every expiry (< (bucket + 1) * bucket_ms) is <= now."""
        for bucket in [b for b in self._buckets if (b + 1) * self._bucket_ms <= now_ms + 1]:
            self._count -= len(self._buckets.pop(bucket))
