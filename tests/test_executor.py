"""The gRPC server's thread pool (``veil.enclave._executor.LifoExecutor``).

What the server relies on: every call runs once and its future gets its result or exception;
never more than ``max_workers`` threads; the thread that went idle last takes the next call (so a
trickle after a burst stays on warm threads); calls beyond the pool wait in arrival order; and
shutdown cancels what is queued and lets every thread end. No timing assertions: order is forced
with events, and every wait is bounded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures

import pytest

from veil.enclave._executor import LifoExecutor

WAIT = 10.0  # seconds: a bound for every wait, never a measured figure


def _park(pool: LifoExecutor, count: int) -> list[int]:
    """Start ``count`` threads at once (each call waits for the others), then let them go idle.

    Returns the thread idents in the order they finished, the last one to go idle last.
    """
    started = threading.Barrier(count + 1)
    finished: list[int] = []
    order = [threading.Event() for _ in range(count)]
    lock = threading.Lock()

    def call(i: int) -> None:
        started.wait(WAIT)
        assert order[i].wait(WAIT)
        with lock:
            finished.append(threading.get_ident())

    calls = [pool.submit(call, i) for i in range(count)]
    started.wait(WAIT)
    for i in range(count):  # finish them one by one, in index order
        order[i].set()
        calls[i].result(WAIT)
        _wait_idle(pool, i + 1)
    return finished


def _wait_idle(pool: LifoExecutor, idle: int) -> None:
    """Wait until ``idle`` threads are parked (each parks just after its future is set)."""
    deadline = threading.Event()
    for _ in range(1000):
        if len(pool._idle) >= idle:  # the test inspects the pool's own stack
            return
        deadline.wait(0.01)
    raise AssertionError(f"{idle} threads never went idle")


def test_runs_every_call_and_hands_back_results_and_exceptions() -> None:
    pool = LifoExecutor(4, thread_name_prefix="t")
    try:
        results = [pool.submit(pow, 2, n) for n in range(200)]
        assert [f.result(WAIT) for f in results] == [2**n for n in range(200)]
        failing = pool.submit(int, "not a number")
        with pytest.raises(ValueError, match="invalid literal"):
            failing.result(WAIT)
        assert pool.threads <= 4
    finally:
        pool.shutdown()


def test_the_thread_that_went_idle_last_takes_the_next_call() -> None:
    pool = LifoExecutor(8, thread_name_prefix="t")
    try:
        finished = _park(pool, 5)
        assert pool.threads == 5
        # A trickle of one call at a time runs on the last thread to go idle, every time.
        ran_on = [pool.submit(threading.get_ident).result(WAIT) for _ in range(20)]
        assert set(ran_on) == {finished[-1]}
        assert pool.threads == 5  # no thread started while one was idle
    finally:
        pool.shutdown()


def _fill(
    workers: int, queue: int, call: Callable[[int], object]
) -> tuple[LifoExecutor, threading.Event, list[futures.Future[object]]]:
    """A pool of ``workers`` threads, all held busy, with ``queue`` calls of ``call(i)`` waiting."""
    pool = LifoExecutor(workers, thread_name_prefix="t")
    gate = threading.Event()
    all_busy = threading.Barrier(workers + 1)

    def hold() -> None:
        all_busy.wait(WAIT)
        assert gate.wait(WAIT)

    held: list[futures.Future[object]] = [pool.submit(hold) for _ in range(workers)]
    all_busy.wait(WAIT)
    queued = [pool.submit(call, i) for i in range(queue)]
    return pool, gate, held + queued


def test_never_more_than_max_workers() -> None:
    ran: list[int] = []
    pool, gate, calls = _fill(2, 6, ran.append)
    try:
        assert pool.threads == 2 and pool.queued == 6
        gate.set()
        for f in calls:
            f.result(WAIT)
        assert sorted(ran) == list(range(6))
        assert pool.queued == 0 and pool.threads == 2
    finally:
        pool.shutdown()


def test_queued_calls_run_first_come_first_served() -> None:
    ran: list[int] = []
    pool, gate, calls = _fill(1, 8, ran.append)
    try:
        gate.set()
        for f in calls:
            f.result(WAIT)
        assert ran == list(range(8))
    finally:
        pool.shutdown()


def test_shutdown_cancels_queued_calls_and_every_thread_ends() -> None:
    pool = LifoExecutor(1, thread_name_prefix="t")
    gate = threading.Event()
    busy = threading.Event()

    def hold() -> str:
        busy.set()
        assert gate.wait(WAIT)
        return "done"

    running = pool.submit(hold)
    assert busy.wait(WAIT)
    queued = [pool.submit(int, "1") for _ in range(3)]
    done_callbacks: list[futures.Future[int]] = []
    queued[0].add_done_callback(done_callbacks.append)  # gRPC counts calls this way
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    assert done_callbacks == [queued[0]]
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(int, "2")
    gate.set()
    assert running.result(WAIT) == "done"  # a call already running finishes
    pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in pool._threads)


def test_shutdown_wakes_idle_threads_and_runs_what_is_queued_without_cancel() -> None:
    pool = LifoExecutor(3, thread_name_prefix="t")
    _park(pool, 3)
    assert len(pool._idle) == 3
    pool.shutdown(wait=True)
    assert not any(t.is_alive() for t in pool._threads)

    pool = LifoExecutor(1, thread_name_prefix="t")
    gate = threading.Event()
    first = pool.submit(gate.wait, WAIT)
    later = [pool.submit(pow, 3, n) for n in range(3)]
    closer = threading.Thread(target=pool.shutdown)  # wait=True, queued calls still run
    closer.start()
    gate.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert first.result(0) is True and [f.result(0) for f in later] == [1, 3, 9]


def test_a_call_cancelled_before_it_runs_is_skipped() -> None:
    pool = LifoExecutor(1, thread_name_prefix="t")
    gate = threading.Event()
    ran: list[str] = []
    try:
        blocker = pool.submit(gate.wait, WAIT)
        skipped = pool.submit(ran.append, "skipped")
        assert skipped.cancel()
        after = pool.submit(ran.append, "after")
        gate.set()
        blocker.result(WAIT)
        after.result(WAIT)
        assert ran == ["after"]
    finally:
        pool.shutdown()


def test_many_submitters_at_once() -> None:
    """16 threads submit 2,000 calls into a pool of 4: each runs exactly once."""
    pool = LifoExecutor(4, thread_name_prefix="t")
    counts = [0] * 2000
    lock = threading.Lock()

    def bump(i: int) -> None:
        with lock:
            counts[i] += 1

    def submit_share(k: int) -> list[futures.Future[None]]:
        return [pool.submit(bump, i) for i in range(k, 2000, 16)]

    try:
        with futures.ThreadPoolExecutor(16) as submitters:
            shares = list(submitters.map(submit_share, range(16)))
        for share in shares:
            for f in share:
                f.result(WAIT)
        assert counts == [1] * 2000
        assert pool.threads <= 4
    finally:
        pool.shutdown()


def test_rejects_an_empty_pool() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LifoExecutor(0)
