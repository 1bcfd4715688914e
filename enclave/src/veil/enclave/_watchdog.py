"""One thread that stops ONNX Runtime runs at their deadline (``RunOptions.terminate``).

ONNX Runtime checks the flag between kernels, inside ``Loop``/``Scan``/``If`` bodies too, so a
run with a 2^62 trip count ends within one iteration of its deadline. One kernel already running
is not interrupted: its size is bounded by the memory ceiling, not by this thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import onnxruntime as ort

__all__ = ["Ticket", "Watchdog"]


@dataclass(eq=False)
class Ticket:
    """One watched run: ``fired`` says whether the watchdog (not the run) ended it, and why."""

    run_options: ort.RunOptions
    deadline: float
    fired: str = ""  # "", "deadline" or "shutdown"


class Watchdog:
    """The runs in flight, checked by one daemon thread (started on first use).

    The thread wakes at the earliest deadline in flight, and at least every ``period`` seconds.
    A new run wakes it only when its deadline comes before the thread's planned wake: with runs
    whose timeouts are longer than ``period`` (the default limits), starting and ending a run
    costs a set insertion and removal, no thread switch. Nothing outlives its run.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, *, period: float = 1.0) -> None:
        self._clock = clock
        self._period = period
        self._cond = threading.Condition()
        self._live: set[Ticket] = set()
        self._wake_at = math.inf  # when the thread plans to look next (inf: not started)
        self._thread: threading.Thread | None = None
        self.closed = False

    def watch(self, run_options: ort.RunOptions, seconds: float) -> Ticket:
        ticket = Ticket(run_options, self._clock() + seconds)
        with self._cond:
            if self.closed:
                ticket.fired = "shutdown"
                run_options.terminate = True
                return ticket
            self._live.add(ticket)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="veil-inference-watchdog", daemon=True
                )
                self._thread.start()
            elif ticket.deadline < self._wake_at:
                self._cond.notify()
        return ticket

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._live)

    def release(self, ticket: Ticket) -> None:
        """The run returned: forget it."""
        with self._cond:
            self._live.discard(ticket)

    def terminate_all(self) -> int:
        """Stop every watched run now and every later one at once; return how many were live."""
        with self._cond:
            self.closed = True
            live = list(self._live)
            for ticket in live:
                ticket.fired = "shutdown"
                ticket.run_options.terminate = True
            self._cond.notify()
            return len(live)

    def _serve(self) -> None:
        with self._cond:
            while not (self.closed and not self._live):  # closed: no run can come any more
                now = self._clock()
                wake = now + self._period
                for ticket in self._live:
                    if ticket.fired:
                        continue
                    if ticket.deadline <= now:
                        ticket.fired = "deadline"
                        ticket.run_options.terminate = True
                    elif ticket.deadline < wake:
                        wake = ticket.deadline
                self._wake_at = wake
                self._cond.wait(wake - now)
