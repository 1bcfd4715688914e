"""The gRPC server's worker threads: the thread that went idle last takes the next call.

``concurrent.futures.ThreadPoolExecutor`` puts every call on one queue that all idle threads
wait on, and the one waiting longest takes it. After a burst has grown the pool (one thread per
call in flight, up to the admission limit), a steady trickle of calls therefore rotates through
every thread the burst left behind, each one's stack, thread-local buffers (ONNX Runtime's,
malloc's arena) and cache lines gone cold since its last call: a lone client's calls to a server
that had taken a 32-client burst were ~20 % slower than to a fresh one (docs/PERFORMANCE.md).

``LifoExecutor`` keeps its idle threads on a stack and hands a call straight to the one that went
idle last, so a trickle keeps running on the same few warm threads and the rest stay parked.
Calls that find every thread busy and the pool at ``max_workers`` wait in a FIFO queue, taken by
the next thread to finish. Threads are started on demand, like ``ThreadPoolExecutor``'s, and
never more than ``max_workers``. They are daemon threads: a process that exits without calling
``shutdown`` does not wait for parked ones (the server shuts its pool down when it stops, after
draining the calls in flight).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent import futures
from typing import Any, ParamSpec, TypeVar

__all__ = ["LifoExecutor"]

P = ParamSpec("P")
T = TypeVar("T")
_Item = tuple["futures.Future[Any]", Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _Worker:
    """One thread and the slot a call is handed to it through (``None``: exit)."""

    def __init__(self) -> None:
        self.item: _Item | None = None
        self.wake = threading.Lock()
        self.wake.acquire()  # parked until a submit (or shutdown) releases it


class LifoExecutor(futures.Executor):
    """A thread pool whose most recently idle thread takes the next call (see the module)."""

    def __init__(self, max_workers: int, *, thread_name_prefix: str = "worker") -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []  # a stack: the last to go idle is on top
        self._pending: deque[_Item] = deque()  # calls waiting for a thread, oldest first
        self._threads: list[threading.Thread] = []
        self._shutdown = False

    @property
    def threads(self) -> int:
        """How many threads the pool has started (busy or idle)."""
        with self._lock:
            return len(self._threads)

    @property
    def queued(self) -> int:
        """Calls accepted that wait for a thread."""
        with self._lock:
            return len(self._pending)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> futures.Future[T]:
        future: futures.Future[T] = futures.Future()
        item: _Item = (future, fn, args, kwargs)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
            if self._idle:
                worker = self._idle.pop()
                worker.item = item
                worker.wake.release()
            elif len(self._threads) < self._max_workers:
                worker = _Worker()
                worker.item = item
                thread = threading.Thread(
                    target=self._work,
                    args=(worker,),
                    name=f"{self._prefix}_{len(self._threads)}",
                    daemon=True,
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._pending.append(item)
        return future

    def _work(self, worker: _Worker) -> None:
        item = worker.item
        while item is not None:
            _run(item)
            del item  # drop the call's arguments and result before parking
            with self._lock:
                if self._pending:
                    item = self._pending.popleft()
                    continue
                if self._shutdown:
                    return
                worker.item = None
                self._idle.append(worker)
            worker.wake.acquire()
            item = worker.item

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; idle threads exit, busy ones once the queue is drained.

        ``cancel_futures``: calls still queued are cancelled rather than run.
        """
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._pending:
                    self._pending.popleft()[0].cancel()
            idle, self._idle = self._idle, []
            threads = list(self._threads)
        for worker in idle:
            worker.item = None
            worker.wake.release()
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


def _run(item: _Item) -> None:
    future, fn, args, kwargs = item
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:  # handed to the future, as ThreadPoolExecutor does
        future.set_exception(exc)
    else:
        future.set_result(result)
