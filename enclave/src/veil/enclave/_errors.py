"""Service-side failures, each mapped to exactly one gRPC status in ``veil.enclave._status``."""

from __future__ import annotations

from veil.sdk.errors import VeilError

__all__ = [
    "AuthError",
    "InvalidInput",
    "LimitExceeded",
    "NotFound",
    "Overloaded",
    "StorageFull",
    "TimedOut",
    "TooLarge",
]


class AuthError(VeilError):
    """Unknown tenant or wrong API key (the two are not told apart)."""


class NotFound(VeilError):
    """The named model (or version) does not exist for this tenant."""


class InvalidInput(VeilError):
    """A well-sealed request asks for something invalid: bad name, shape, dtype, ONNX."""


class TooLarge(VeilError):
    """A model, chunk or tensor exceeds the configured limit."""


class TimedOut(VeilError):
    """An inference (or other bounded work) ran past its wall-clock limit and was stopped."""


class LimitExceeded(VeilError):
    """A request needed more memory (or another per-request resource) than its limit allows."""


class Overloaded(VeilError):
    """A concurrency limit is reached (uploads, inferences, streams); retry later."""


class StorageFull(VeilError):
    """The disk is full, or writing would eat into the headroom kept for the audit log."""
