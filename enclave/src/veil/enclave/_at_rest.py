"""Encryption at rest: AES-256-GCM under a TEE-derived key, with the object's identity as AAD."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.sdk.errors import DecryptionError

__all__ = ["open_blob", "seal_blob"]

_NONCE = 12


def seal_blob(key: bytes, data: bytes, aad: bytes) -> bytes:
    """``nonce ‖ AES-256-GCM(key, nonce, data, aad)`` with a fresh random nonce."""
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, data, aad)


def open_blob(key: bytes, blob: bytes, aad: bytes, *, what: str) -> bytes:
    """Decrypt a stored blob; a wrong key, a moved file or a flipped bit raises."""
    try:
        return AESGCM(key).decrypt(blob[:_NONCE], blob[_NONCE:], aad)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError(f"stored {what} failed its integrity check") from exc
