"""Capacity for every call: admission slots per call class, and one watchdog for idle streams.

gRPC's synchronous server gives a call a worker thread for its whole life, so a kind of call that
can last (an upload stream waiting for its client, a slow inference, a training job) could take
every thread and freeze the service, attestation and health checks included. Each such class
gets a fixed number of slots, taken without waiting (a full class answers ``Overloaded`` at once)
and held until the call ends. The executor has a thread for every slot plus
``RESERVED_WORKERS`` more, which the capped classes can never reach: attestation and health
(class ``OPEN``, never capped) are always served.

A request stream that sends nothing for ``stream_idle_seconds`` while the server waits for it
(its header included) is cancelled by one watchdog thread: ``ServicerContext.cancel`` ends the
call and wakes the reader, which then raises ``TimedOut``, so the slot and the thread are freed.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import grpc

from veil.enclave._errors import Overloaded, TimedOut
from veil.enclave._limits import Limits
from veil.sdk.errors import ProtocolError

__all__ = [
    "RESERVED_WORKERS",
    "Admission",
    "CallClass",
    "IdleWatchdog",
    "Slot",
]

T = TypeVar("T")

# Threads only uncapped calls (attestation, health) can use, whatever the capped classes hold.
RESERVED_WORKERS = 8


class CallClass(enum.Enum):
    """What a call is, for admission: each capped class has its own slots."""

    OPEN = "open"  # attestation and health: never capped, served from the reserved threads
    UPLOAD = "upload"  # model and dataset upload streams
    INFERENCE = "inference"  # inference and watermarking (they run models)
    TRAINING = "training"  # DP training jobs
    SEALED = "sealed"  # every other sealed call (listing, deleting, audit reads, budgets)
    REFLECTION = "reflection"  # server reflection streams


# The cap of the one class ``[limits]`` does not name: reflection (a debug aid).
REFLECTION_SLOTS = 2


class Slot:
    """One admitted call; ``release`` (idempotent) gives its place back."""

    def __init__(self, admission: Admission, kind: CallClass) -> None:
        self._admission = admission
        self._kind = kind
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self._kind)


class Admission:
    """Non-blocking slots per call class; counts every call in flight (``OPEN`` ones too)."""

    def __init__(self, caps: Mapping[CallClass, int]) -> None:
        if CallClass.OPEN in caps or any(n < 1 for n in caps.values()):
            raise ValueError("caps are positive and the OPEN class is never capped")
        self._caps = dict(caps)
        self._held = dict.fromkeys(CallClass, 0)
        self._closed = False
        self._cond = threading.Condition()

    @classmethod
    def from_limits(cls, limits: Limits) -> Admission:
        return cls(
            {
                CallClass.UPLOAD: limits.max_concurrent_uploads,
                CallClass.INFERENCE: limits.max_concurrent_inferences,
                CallClass.TRAINING: limits.max_concurrent_trainings,
                CallClass.SEALED: limits.max_concurrent_calls,
                CallClass.REFLECTION: REFLECTION_SLOTS,
            }
        )

    @property
    def workers(self) -> int:
        """Threads the server needs: one per slot, plus the ones kept for uncapped calls."""
        return sum(self._caps.values()) + RESERVED_WORKERS

    def enter(self, kind: CallClass) -> Slot:
        """Take a slot of ``kind`` now, or raise ``Overloaded`` (never waits)."""
        with self._cond:
            if self._closed:
                raise Overloaded("the service is shutting down")
            cap = self._caps.get(kind)
            if cap is not None and self._held[kind] >= cap:
                raise Overloaded(f"too many concurrent {kind.value} calls; retry later")
            self._held[kind] += 1
        return Slot(self, kind)

    def _release(self, kind: CallClass) -> None:
        with self._cond:
            self._held[kind] -= 1
            self._cond.notify_all()

    def held(self, kind: CallClass) -> int:
        with self._cond:
            return self._held[kind]

    def close(self) -> None:
        """Refuse every new call from now on (shutdown)."""
        with self._cond:
            self._closed = True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no admitted call is in flight; False if some still are after ``timeout``."""
        with self._cond:
            return self._cond.wait_for(lambda: not any(self._held.values()), timeout)


class _Watched(Generic[T]):
    """A request iterator whose waits the watchdog times."""

    def __init__(
        self, requests: Iterator[T], context: grpc.ServicerContext, watchdog: IdleWatchdog
    ) -> None:
        self._requests = requests
        self.context = context
        self._watchdog = watchdog
        self.waiting_since: float | None = None
        self.expired = False

    def __iter__(self) -> _Watched[T]:
        return self

    def __next__(self) -> T:
        self._watchdog._start_wait(self)
        try:
            item = next(self._requests)
        except grpc.RpcError as exc:  # cancelled: by the watchdog, the client, or shutdown
            if self.expired:
                raise self._timed_out() from None
            raise ProtocolError("the stream was cancelled before it ended") from exc
        except StopIteration:
            if self.expired:
                raise self._timed_out() from None
            raise
        finally:
            self._watchdog._end_wait(self)
        if self.expired:
            raise self._timed_out()
        return item

    def _timed_out(self) -> TimedOut:
        return TimedOut(f"stream sent nothing for {self._watchdog.idle_seconds:g} s")


class IdleWatchdog:
    """One thread that cancels request streams left idle for ``idle_seconds``.

    It looks about four times per period: an idle stream is cancelled after between
    ``idle_seconds`` and 1.25 times that (at most one second late).
    """

    def __init__(self, idle_seconds: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if idle_seconds <= 0:
            raise ValueError("idle_seconds must be positive")
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._tick = min(max(idle_seconds / 4, 0.05), 1.0)
        self._waiting: set[_Watched[Any]] = set()
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="veil-idle-watchdog", daemon=True)
        self._thread.start()

    def watch(self, requests: Iterator[T], context: grpc.ServicerContext) -> Iterator[T]:
        """``requests``, cancelled through ``context`` if the client leaves it idle too long."""
        return _Watched(requests, context, self)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    def _start_wait(self, watched: _Watched[Any]) -> None:
        with self._cond:
            watched.waiting_since = self._clock()
            self._waiting.add(watched)

    def _end_wait(self, watched: _Watched[Any]) -> None:
        with self._cond:
            watched.waiting_since = None
            self._waiting.discard(watched)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                now = self._clock()
                expired = [
                    w
                    for w in self._waiting
                    if w.waiting_since is not None and now - w.waiting_since >= self.idle_seconds
                ]
                for w in expired:
                    w.expired = True
                    self._waiting.discard(w)
            for w in expired:  # outside the lock: cancelling wakes the reader, which locks
                w.context.cancel()
            with self._cond:
                if not self._closed:
                    self._cond.wait(self._tick)
