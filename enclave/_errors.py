"""Service-side failures, each mapped to exactly one gRPC status in ``enclave._status``."""

from __future__ import annotations

from sdk._errors import VeilError

__all__ = ["AuthError", "InvalidInput", "NotFound", "TooLarge"]


class AuthError(VeilError):
    """Unknown tenant or wrong API key (the two are not told apart)."""


class NotFound(VeilError):
    """The named model (or version) does not exist for this tenant."""


class InvalidInput(VeilError):
    """A well-sealed request asks for something invalid: bad name, shape, dtype, ONNX."""


class TooLarge(VeilError):
    """A model, chunk or tensor exceeds the configured limit."""
