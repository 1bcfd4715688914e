"""The one place where Veil errors become gRPC statuses.

Each status carries trailing metadata ``veil-reason`` (a short machine-readable code) so clients
in any language can react (e.g. re-attest on ``key-rotated``) without parsing messages.

Nothing sealed leaks through a status (docs/PROTOCOL.md, section 7). A failure after the request
opened is raised as :class:`SealedFailure`: its clear message is the fixed one for its reason and
the detailed message travels sealed to the caller's response key in the trailer
``veil-sealed-error-bin``. A failure before the request opened keeps its own message only when it
is one of the gateway's refusals, which quote nothing but clear envelope numbers; anything else
gets the fixed message. Logs at INFO name the status and reason only; the detail is DEBUG.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc

from veil.enclave._errors import (
    AuthError,
    InvalidInput,
    LimitExceeded,
    NotFound,
    Overloaded,
    StorageFull,
    TimedOut,
    TooLarge,
)
from veil.enclave._gateway import OpenedRequest
from veil.enclave._keys import UnknownKeyError
from veil.enclave._replay import ReplayError, StaleRequestError
from veil.enclave._sessions import UnknownSessionError
from veil.sdk.errors import (
    AttestationError,
    AuditLogError,
    DecryptionError,
    PrivacyBudgetExceeded,
    ProtocolError,
    RemoteReason,
    WatermarkError,
)
from veil.sdk.sealing import SEALED_ERROR_KEY, bounded_message, clear_message, seal_error

__all__ = [
    "REASON_KEY",
    "SealedFailure",
    "abort_with",
    "grpc_errors",
    "grpc_stream_errors",
    "status_for",
]

REASON_KEY = "veil-reason"
MAX_CLEAR_MESSAGE_BYTES = 256
log = logging.getLogger("veil.enclave")

# Refusals of the gateway before a request opens: their messages quote only numbers from the
# clear envelope (version, suite, clock skew) or nothing at all, so they may stay in clear.
_CLEAR_SAFE: tuple[type[BaseException], ...] = (
    DecryptionError,
    ProtocolError,
    ReplayError,
    StaleRequestError,
    UnknownKeyError,
    UnknownSessionError,
)


class SealedFailure(Exception):
    """``cause`` failed a call whose request opened: its detail is sealed to the caller.

    ``seq`` is the number of messages already sent on the call (0 for unary calls), so the
    sealed error takes the place of the next message.
    """

    def __init__(self, cause: Exception, opened: OpenedRequest, *, seq: int = 0) -> None:
        super().__init__(type(cause).__name__)
        self.cause = cause
        self.opened = opened
        self.seq = seq


# Most specific first: the first matching class wins.
_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode, RemoteReason], ...] = (
    (AuthError, grpc.StatusCode.UNAUTHENTICATED, RemoteReason.UNAUTHENTICATED),
    (NotFound, grpc.StatusCode.NOT_FOUND, RemoteReason.NOT_FOUND),
    (TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED, RemoteReason.TOO_LARGE),
    (TimedOut, grpc.StatusCode.DEADLINE_EXCEEDED, RemoteReason.TIMEOUT),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED, RemoteReason.MEMORY_LIMIT),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED, RemoteReason.OVERLOADED),
    (StorageFull, grpc.StatusCode.RESOURCE_EXHAUSTED, RemoteReason.STORAGE_FULL),
    (PrivacyBudgetExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED, RemoteReason.BUDGET_EXHAUSTED),
    (UnknownKeyError, grpc.StatusCode.FAILED_PRECONDITION, RemoteReason.KEY_ROTATED),
    (StaleRequestError, grpc.StatusCode.FAILED_PRECONDITION, RemoteReason.STALE_REQUEST),
    (ReplayError, grpc.StatusCode.ALREADY_EXISTS, RemoteReason.REPLAY),
    (UnknownSessionError, grpc.StatusCode.FAILED_PRECONDITION, RemoteReason.SESSION_EXPIRED),
    (DecryptionError, grpc.StatusCode.INVALID_ARGUMENT, RemoteReason.UNDECRYPTABLE),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT, RemoteReason.INVALID_INPUT),
    (WatermarkError, grpc.StatusCode.INVALID_ARGUMENT, RemoteReason.INVALID_INPUT),
    (ProtocolError, grpc.StatusCode.INVALID_ARGUMENT, RemoteReason.MALFORMED),
    (AttestationError, grpc.StatusCode.FAILED_PRECONDITION, RemoteReason.ATTESTATION),
    (AuditLogError, grpc.StatusCode.UNAVAILABLE, RemoteReason.AUDIT_UNAVAILABLE),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, RemoteReason, str]:
    """(status code, reason, message) for an exception; unknown ones are INTERNAL, no detail."""
    for cls, code, reason in _TABLE:
        if isinstance(exc, cls):
            return code, reason, str(exc)
    incident = secrets.token_hex(4)
    return grpc.StatusCode.INTERNAL, RemoteReason.INTERNAL, f"internal error (incident {incident})"


def abort_with(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    """Abort the call with ``exc``'s status; a :class:`SealedFailure` sends its detail sealed."""
    cause = exc.cause if isinstance(exc, SealedFailure) else exc
    code, reason, message = status_for(cause)
    trailers: list[tuple[str, str | bytes]] = [(REASON_KEY, reason.value)]
    if code is grpc.StatusCode.INTERNAL:
        clear = message  # the incident id only
        # Type and incident only: messages of unexpected errors may quote request data.
        log.error("%s: %s", message, type(cause).__name__)
        # The traceback (with the exception's text) only at DEBUG: it may quote request data.
        log.debug("incident traceback", exc_info=cause)
    else:
        public = not isinstance(exc, SealedFailure) and isinstance(cause, _CLEAR_SAFE)
        clear = (
            bounded_message(message, MAX_CLEAR_MESSAGE_BYTES) if public else clear_message(reason)
        )
        log.info("refused %s (%s)", code.name, reason)
        log.debug("refused %s (%s): %s", code.name, reason, message)
    if isinstance(exc, SealedFailure):
        sealed = seal_error(
            exc.opened.response_key,
            method=exc.opened.method,
            request_id=exc.opened.request_id,
            code=code.name,
            reason=reason,
            message=message,
            seq=exc.seq,
        )
        trailers.append((SEALED_ERROR_KEY, sealed.SerializeToString()))
    context.set_trailing_metadata(tuple(trailers))
    context.abort(code, clear)
    raise AssertionError("unreachable")  # context.abort raises


F = TypeVar("F", bound=Callable[..., Any])


def grpc_errors(method: F) -> F:
    """Decorate a servicer method: any exception becomes a precise status, never a crash."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:  # VeilErrors map precisely; anything else is INTERNAL
            abort_with(context, exc)

    return wrapper  # type: ignore[return-value]


G = TypeVar("G", bound=Callable[..., Iterator[Any]])


def grpc_stream_errors(method: G) -> G:
    """Like :func:`grpc_errors` for a server-streaming method (errors raised while iterating)."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except Exception as exc:
            abort_with(context, exc)

    return wrapper  # type: ignore[return-value]
