"""Watermark secrets and everything derived from them, deterministically.

The watermark key is 32 secret bytes plus a 32-byte commitment opening (``nonce``). Before release
only ``commitment`` = SHA-256("veil-wm-commit-v1" || secret || nonce) is published (in the signed
claim); at verification the owner reveals the key, and anyone can recompute the commitment, the
projection matrix and the trigger set from it.

Randomness is injected: :meth:`WatermarkKey.generate` takes a ``randbytes`` callable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from veil.sdk.errors import WatermarkError

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "WatermarkKey",
    "derive_projection",
    "gaussian_stream",
    "message_bits",
]

MIN_BITS = 16
MAX_BITS = 256
_COMMIT_DOMAIN = b"veil-wm-commit-v1"
_MSG_DOMAIN = b"veil-wm-msg-v1"
_PROJ_DOMAIN = b"veil-wm-proj-v1"
_SECOND_DOMAIN = b"veil-wm-second-mark-v1\x00"


@dataclass(frozen=True)
class WatermarkKey:
    """The owner's watermark secret and the opening of its commitment."""

    secret: bytes
    nonce: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != 32 or len(self.nonce) != 32:
            raise WatermarkError(
                f"watermark key needs a 32-byte secret and nonce, got "
                f"{len(self.secret)} and {len(self.nonce)} bytes"
            )

    def __repr__(self) -> str:  # never print the secret
        return f"WatermarkKey(commitment={self.commitment().hex()[:16]}...)"

    @classmethod
    def generate(cls, randbytes: Callable[[int], bytes] = os.urandom) -> WatermarkKey:
        """A fresh key; ``randbytes`` must be a CSPRNG (``os.urandom`` by default)."""
        return cls(secret=randbytes(32), nonce=randbytes(32))

    def commitment(self) -> bytes:
        """SHA-256 commitment published in the claim before the key is revealed."""
        return hashlib.sha256(_COMMIT_DOMAIN + self.secret + self.nonce).digest()

    def opens(self, commitment: bytes) -> bool:
        """Whether this key is the opening of ``commitment`` (constant-time comparison)."""
        return hmac.compare_digest(self.commitment(), commitment)

    def to_dict(self) -> dict[str, str]:
        return {"secret": self.secret.hex(), "nonce": self.nonce.hex()}

    @classmethod
    def from_dict(cls, data: object) -> WatermarkKey:
        if not isinstance(data, dict):
            raise WatermarkError("watermark key must be a JSON object with secret and nonce")
        try:
            secret = bytes.fromhex(str(data["secret"]))
            nonce = bytes.fromhex(str(data["nonce"]))
        except (KeyError, ValueError) as exc:
            raise WatermarkError(f"watermark key is malformed: {exc}") from exc
        return cls(secret=secret, nonce=nonce)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> WatermarkKey:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WatermarkError(f"watermark key is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def message_bits(owner_public_key: bytes, n_bits: int) -> npt.NDArray[np.int8]:
    """First ``n_bits`` bits of SHA-256("veil-wm-msg-v1" || pubkey), as +1/-1 signs (MSB first)."""
    if not MIN_BITS <= n_bits <= MAX_BITS:
        raise WatermarkError(f"bit count {n_bits} is outside [{MIN_BITS}, {MAX_BITS}]")
    if len(owner_public_key) != 32:
        raise WatermarkError(f"owner public key is {len(owner_public_key)} bytes, expected 32")
    digest = hashlib.sha256(_MSG_DOMAIN + owner_public_key).digest()
    bits = np.unpackbits(np.frombuffer(digest, dtype=np.uint8))[:n_bits]
    return (bits.astype(np.int8) * 2 - 1).astype(np.int8)


def gaussian_stream(seed: bytes, count: int) -> npt.NDArray[np.float64]:
    """``count`` standard normal draws from the SHAKE-256 XOF of ``seed`` (Box-Muller).

    Each pair of 64-bit words gives two uniforms in (0, 1) with 53-bit resolution; the output is
    a pure function of ``seed``, identical on every platform.
    """
    pairs = (count + 1) // 2
    raw = hashlib.shake_256(seed).digest(16 * pairs)
    words = np.frombuffer(raw, dtype="<u8").reshape(pairs, 2)
    u = ((words >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
    radius = np.sqrt(-2.0 * np.log(u[:, 0]))
    angle = 2.0 * np.pi * u[:, 1]
    out = np.empty(2 * pairs, dtype=np.float64)
    out[0::2] = radius * np.cos(angle)
    out[1::2] = radius * np.sin(angle)
    return out[:count]


def derive_projection(
    secret: bytes, n_bits: int, dim: int, *, mark: int = 0
) -> npt.NDArray[np.float64]:
    """The secret ``n_bits x dim`` projection matrix with i.i.d. N(0, 1) entries.

    ``mark`` numbers the marks of one claim: the second mark's matrix (``mark=1``) comes from a
    domain-separated seed, so it is independent of the first's whatever the dimensions.
    """
    if dim <= 0:
        raise WatermarkError(f"projection dimension must be positive, got {dim}")
    if mark not in (0, 1):
        raise WatermarkError(f"mark index {mark} is not 0 or 1")
    seed = _PROJ_DOMAIN + secret + n_bits.to_bytes(4, "big") + dim.to_bytes(8, "big")
    if mark:
        seed = _SECOND_DOMAIN + seed
    return gaussian_stream(seed, n_bits * dim).reshape(n_bits, dim)
