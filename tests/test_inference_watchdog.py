"""The inference watchdog: deadlines fire, shutdown stops every run, and runs cost no wake-up."""

from __future__ import annotations

import threading
import time

import onnxruntime as ort

from veil.enclave._watchdog import Watchdog

_THREAD = "veil-inference-watchdog"


class _CountingClock:
    """time.monotonic, counting the calls the watchdog's own thread makes (one per look)."""

    def __init__(self) -> None:
        self.looks = 0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        if threading.current_thread().name == _THREAD:
            with self._lock:
                self.looks += 1
        return time.monotonic()


def _wait_for(predicate: object, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return False


def test_a_short_deadline_fires_before_the_period() -> None:
    dog = Watchdog(period=30.0)
    dog.watch(ort.RunOptions(), 30.0)  # starts the thread, planning its next look in ~30 s
    options = ort.RunOptions()
    ticket = dog.watch(options, 0.05)  # earlier than the planned look: the thread is woken
    assert _wait_for(lambda: options.terminate)
    assert ticket.fired == "deadline"
    dog.release(ticket)
    assert dog.in_flight == 1


def test_a_run_that_returns_in_time_is_never_stopped() -> None:
    dog = Watchdog(period=0.02)
    options = ort.RunOptions()
    ticket = dog.watch(options, 60.0)
    time.sleep(0.1)  # several looks of the thread
    dog.release(ticket)
    assert not options.terminate
    assert ticket.fired == ""
    assert dog.in_flight == 0


def test_runs_with_long_timeouts_do_not_wake_the_thread() -> None:
    clock = _CountingClock()
    dog = Watchdog(clock, period=10.0)
    dog.release(dog.watch(ort.RunOptions(), 30.0))  # starts the thread
    assert _wait_for(lambda: clock.looks >= 1)
    looks = clock.looks
    for _ in range(2000):
        dog.release(dog.watch(ort.RunOptions(), 30.0))
    time.sleep(0.05)
    assert clock.looks == looks  # 2000 runs, no look: none of them came before the planned one
    assert dog.in_flight == 0


def test_terminate_all_stops_live_runs_and_later_ones() -> None:
    dog = Watchdog(period=0.02)
    live = [ort.RunOptions() for _ in range(3)]
    tickets = [dog.watch(o, 60.0) for o in live]
    assert dog.terminate_all() == 3
    assert all(o.terminate for o in live)
    assert all(t.fired == "shutdown" for t in tickets)
    later = ort.RunOptions()
    assert dog.watch(later, 60.0).fired == "shutdown"
    assert later.terminate
    before = _watchdog_threads()
    for ticket in tickets:  # the stopped runs return
        dog.release(ticket)
    assert _wait_for(lambda: _watchdog_threads() == before - 1)  # its thread has ended


def _watchdog_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == _THREAD)
