"""One thread that stops ONNX Runtime runs at their deadline (``RunOptions.terminate``).

ONNX Runtime checks the flag between kernels, inside ``Loop``/``Scan``/``If`` bodies too, so a
run with a 2^62 trip count ends within one iteration of its deadline. One kernel already running
is not interrupted: its size is bounded by the memory ceiling, not by this thread.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import onnxruntime as ort

__all__ = ["Ticket", "Watchdog"]


@dataclass(eq=False)
class Ticket:
    """One watched run: ``fired`` says whether the watchdog (not the run) ended it, and why."""

    run_options: ort.RunOptions
    deadline: float
    fired: str = ""  # "", "deadline" or "shutdown"
    done: bool = field(default=False, repr=False)


class Watchdog:
    """A deadline heap served by one daemon thread (started on first use)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Ticket]] = []
        self._live: set[Ticket] = set()
        self._seq = itertools.count()
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
            heapq.heappush(self._heap, (ticket.deadline, next(self._seq), ticket))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="veil-inference-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return ticket

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._live)

    def release(self, ticket: Ticket) -> None:
        """The run returned: forget it (its heap entry is dropped when it comes up)."""
        with self._cond:
            ticket.done = True
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
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, ticket = self._heap[0]
                now = self._clock()
                if now < deadline:
                    self._cond.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                if not ticket.fired:
                    ticket.fired = "deadline"
                ticket.run_options.terminate = True
