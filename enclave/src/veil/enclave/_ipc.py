"""The private call channel between the supervisor and one worker process.

Each worker gets one end of an anonymous ``socketpair`` created before it is forked: no path,
no port, nothing another process can connect to. Frames are a 4-byte length and a pickle of
plain values only (tuples, lists, dicts, bytes, str, numbers, None): the unpickler refuses every
global, so a frame can name no class or function to run.

A worker makes calls (``Channel.call``: many at once, from any thread, answered out of order
by id); the supervisor answers each on a thread pool (an audit append waits for its group
commit) and may push (call id 0) to the worker, e.g. a new key epoch.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import pickle
import socket
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from veil.sdk.errors import AuditLogError, VeilError

__all__ = ["Channel", "ChannelClosed", "Endpoint"]

log = logging.getLogger("veil.enclave")

MAX_FRAME_BYTES = 64 * 1024 * 1024
PUSH = 0  # the call id of a message nobody waits for


class ChannelClosed(AuditLogError):
    """The other process of the channel is gone."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"frame names {module}.{name}: only plain values travel")


def _encode(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=5)
    return len(data).to_bytes(4, "big") + data


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return bytes(buf)


def _receive(sock: socket.socket) -> tuple[Any, ...] | None:
    """The next message, or None when the other end closed (or sent something invalid)."""
    try:
        head = _read_exactly(sock, 4)
        if head is None:
            return None
        size = int.from_bytes(head, "big")
        if size > MAX_FRAME_BYTES:
            log.error("control channel: a %d-byte frame was refused", size)
            return None
        body = _read_exactly(sock, size)
        if body is None:
            return None
        message = _PlainUnpickler(io.BytesIO(body)).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        log.error("control channel: unreadable frame (%s)", type(exc).__name__)
        return None
    return message if isinstance(message, tuple) else None


def _error_classes(root: type[BaseException]) -> dict[tuple[str, str], type[BaseException]]:
    found: dict[tuple[str, str], type[BaseException]] = {}
    stack = [root]
    while stack:
        cls = stack.pop()
        found[(cls.__module__, cls.__qualname__)] = cls
        stack.extend(cls.__subclasses__())
    return found


def _rebuild(module: str, name: str, message: str) -> BaseException:
    """The supervisor's error as the worker raises it: the same ``VeilError`` subclass if it
    can be built from its message alone, otherwise an ``AuditLogError`` with that message."""
    cls = _error_classes(VeilError).get((module, name))
    if cls is not None:
        try:
            return cls(message)
        except TypeError:
            pass
    return AuditLogError(message)


class _Sender:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, message: tuple[Any, ...]) -> None:
        frame = _encode(message)
        with self._lock:
            self._sock.sendall(frame)


class Channel:
    """The worker's end: ``call`` the supervisor, receive its pushes on ``on_push``."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        on_push: Callable[[str, tuple[Any, ...]], None],
        on_close: Callable[[], None],
    ) -> None:
        self._sock = sock
        self._sender = _Sender(sock)
        self._on_push = on_push
        self._on_close = on_close
        self._ids = itertools.count(PUSH + 1)
        self._pending: dict[int, Future[tuple[bool, Any]]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="veil-control", daemon=True)
        self._reader.start()

    def call(self, op: str, *args: Any, timeout: float | None = None) -> Any:
        """The supervisor's answer to ``op(*args)``; its error is raised here."""
        future: Future[tuple[bool, Any]] = Future()
        with self._lock:
            if self._closed:
                raise ChannelClosed("the enclave supervisor is gone")
            call_id = next(self._ids)
            self._pending[call_id] = future
        try:
            self._sender.send((call_id, op, args))
        except OSError as exc:
            with self._lock:
                self._pending.pop(call_id, None)
            raise ChannelClosed("the enclave supervisor is gone") from exc
        ok, value = future.result(timeout)
        if ok:
            return value
        raise _rebuild(*value)

    def _read(self) -> None:
        while (message := _receive(self._sock)) is not None:
            call_id, op, payload = message
            if call_id == PUSH:
                try:
                    self._on_push(op, payload)
                except Exception:
                    log.exception("control channel: push %r failed", op)
                continue
            with self._lock:
                future = self._pending.pop(call_id, None)
            if future is not None:
                future.set_result(payload)
        with self._lock:
            self._closed = True
            pending, self._pending = self._pending, {}
        gone = (False, (ChannelClosed.__module__, ChannelClosed.__qualname__, "supervisor gone"))
        for future in pending.values():
            future.set_result(gone)
        self._on_close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(timeout=5)
        self._sock.close()


class Endpoint:
    """The supervisor's end of one worker's channel: answers its calls on ``pool``."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        handle: Callable[[str, tuple[Any, ...]], Any],
        pool: Executor,
        name: str,
    ) -> None:
        self._sock = sock
        self._sender = _Sender(sock)
        self._handle = handle
        self._pool = pool
        self._reader = threading.Thread(target=self._read, name=name, daemon=True)
        self._reader.start()

    def push(self, op: str, *args: Any) -> None:
        """Send without waiting; a worker that is gone is not an error (it is restarted)."""
        with contextlib.suppress(OSError):
            self._sender.send((PUSH, op, args))

    def _read(self) -> None:
        while (message := _receive(self._sock)) is not None:
            call_id, op, args = message
            try:
                self._pool.submit(self._answer, call_id, op, args)
            except RuntimeError:  # the pool is shut down: the service is stopping
                break

    def _answer(self, call_id: int, op: str, args: tuple[Any, ...]) -> None:
        try:
            reply: tuple[bool, Any] = (True, self._handle(op, args))
        except Exception as exc:
            cls = type(exc)
            reply = (False, (cls.__module__, cls.__qualname__, str(exc)))
        with contextlib.suppress(OSError):  # the worker died meanwhile, and its caller with it
            self._sender.send((call_id, op, reply))

    def detach(self) -> None:
        """In a forked child: drop this process's copy of the socket (the parent keeps its own;
        the reader thread was not forked)."""
        self._sock.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._reader.join(timeout=5)
        self._sock.close()
