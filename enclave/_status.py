"""The one place where Veil errors become gRPC statuses.

Each status carries trailing metadata ``veil-reason`` (a short machine-readable code) so clients
in any language can react (e.g. re-attest on ``key-rotated``) without parsing messages.
"""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc

from enclave._errors import (
    AuthError,
    InvalidInput,
    LimitExceeded,
    NotFound,
    Overloaded,
    StorageFull,
    TimedOut,
    TooLarge,
)
from enclave._keys import UnknownKeyError
from enclave._replay import ReplayError, StaleRequestError
from sdk._errors import (
    AttestationError,
    AuditLogError,
    DecryptionError,
    PrivacyBudgetExceeded,
    ProtocolError,
    WatermarkError,
)

__all__ = ["REASON_KEY", "abort_with", "grpc_errors", "grpc_stream_errors", "status_for"]

REASON_KEY = "veil-reason"
log = logging.getLogger("veil.enclave")

# Most specific first: the first matching class wins.
_TABLE: tuple[tuple[type[BaseException], grpc.StatusCode, str], ...] = (
    (AuthError, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"),
    (NotFound, grpc.StatusCode.NOT_FOUND, "not-found"),
    (TooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED, "too-large"),
    (TimedOut, grpc.StatusCode.DEADLINE_EXCEEDED, "timeout"),
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED, "memory-limit"),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded"),
    (StorageFull, grpc.StatusCode.RESOURCE_EXHAUSTED, "storage-full"),
    (PrivacyBudgetExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED, "budget-exhausted"),
    (UnknownKeyError, grpc.StatusCode.FAILED_PRECONDITION, "key-rotated"),
    (StaleRequestError, grpc.StatusCode.FAILED_PRECONDITION, "stale-request"),
    (ReplayError, grpc.StatusCode.ALREADY_EXISTS, "replay"),
    (DecryptionError, grpc.StatusCode.INVALID_ARGUMENT, "undecryptable"),
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT, "invalid-input"),
    (WatermarkError, grpc.StatusCode.INVALID_ARGUMENT, "invalid-input"),
    (ProtocolError, grpc.StatusCode.INVALID_ARGUMENT, "malformed"),
    (AttestationError, grpc.StatusCode.FAILED_PRECONDITION, "attestation"),
    (AuditLogError, grpc.StatusCode.UNAVAILABLE, "audit-unavailable"),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str, str]:
    """(status code, reason, message) for an exception; unknown ones are INTERNAL, no detail."""
    for cls, code, reason in _TABLE:
        if isinstance(exc, cls):
            return code, reason, str(exc)
    incident = secrets.token_hex(4)
    return grpc.StatusCode.INTERNAL, "internal", f"internal error (incident {incident})"


def abort_with(context: grpc.ServicerContext, exc: BaseException) -> NoReturn:
    code, reason, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        # Type and incident only: messages of unexpected errors may quote request data.
        log.error("%s: %s", message, type(exc).__name__)
        # The traceback (with the exception's text) only at DEBUG: it may quote request data.
        log.debug("incident traceback", exc_info=exc)
    else:
        log.info("refused %s: %s", code.name, message)
    context.set_trailing_metadata(((REASON_KEY, reason),))
    context.abort(code, message)
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
