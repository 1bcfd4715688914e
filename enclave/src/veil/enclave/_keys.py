"""The enclave's sealing keys: generated in memory at start, rotated per epoch, never on disk."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from veil.sdk.errors import ProtocolError
from veil.sdk.evidence import to_ms
from veil.sdk.protocol import PROTOCOL_VERSION, Suite, claims_digest, encode_hybrid
from veil.v1 import attestation_pb2

__all__ = ["KeyEpoch", "KeyRing", "UnknownKeyError"]

PrivateKey = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey


class UnknownKeyError(ProtocolError):
    """The request was sealed to a key epoch this enclave no longer (or never) had."""


@dataclass(frozen=True)
class KeyEpoch:
    """One generation of sealing keys and the claims (bytes) that publish them."""

    key_id: str
    private_keys: dict[Suite, PrivateKey]
    claims: bytes
    digest: bytes
    expires_at: datetime

    @classmethod
    def generate(
        cls,
        *,
        now: datetime,
        lifetime: timedelta,
        measurement: bytes,
        audit_log_key: bytes = b"",
        audit_log_origin: str = "",
    ) -> KeyEpoch:
        x = x25519.X25519PrivateKey.generate()
        hybrid_m = mlkem.MLKEM768PrivateKey.generate()
        hybrid_x = x25519.X25519PrivateKey.generate()
        private: dict[Suite, PrivateKey] = {
            Suite.X25519_SHA256_AES256GCM: x,
            Suite.MLKEM768X25519_SHA256_AES256GCM: hpke.MLKEM768X25519PrivateKey(
                hybrid_m, hybrid_x
            ),
        }
        key_id = secrets.token_hex(8)
        expires = now + lifetime
        claims = attestation_pb2.EnclaveClaims(
            protocol_version=PROTOCOL_VERSION,
            key_id=key_id,
            keys=[
                attestation_pb2.SuiteKey(
                    suite=int(Suite.X25519_SHA256_AES256GCM),
                    public_key=x.public_key().public_bytes_raw(),
                ),
                attestation_pb2.SuiteKey(
                    suite=int(Suite.MLKEM768X25519_SHA256_AES256GCM),
                    public_key=encode_hybrid(hybrid_m.public_key(), hybrid_x.public_key()),
                ),
            ],
            issued_at_ms=to_ms(now),
            expires_at_ms=to_ms(expires),
            measurement_hex=measurement.hex(),  # empty on real hardware (it measures itself)
            audit_log_key=audit_log_key,
            audit_log_origin=audit_log_origin,
        ).SerializeToString(deterministic=True)
        return cls(
            key_id=key_id,
            private_keys=private,
            claims=claims,
            digest=claims_digest(claims),
            expires_at=expires,
        )


class KeyRing:
    """The current epoch plus the previous one (so requests in flight at a rotation still open)."""

    def __init__(self, first: KeyEpoch) -> None:
        self._lock = threading.Lock()
        self._current = first
        self._previous: KeyEpoch | None = None

    @property
    def current(self) -> KeyEpoch:
        with self._lock:
            return self._current

    def rotate(self, new: KeyEpoch, *, keep_previous: bool = True) -> None:
        with self._lock:
            self._previous = self._current if keep_previous else None
            self._current = new

    def find(self, digest: bytes, now: datetime) -> KeyEpoch:
        """The epoch whose claims digest the client attested; raise if unknown or expired."""
        with self._lock:
            candidates = [e for e in (self._current, self._previous) if e is not None]
        for epoch in candidates:
            if secrets.compare_digest(epoch.digest, digest):
                if now >= epoch.expires_at:
                    break
                return epoch
        raise UnknownKeyError("request is sealed to an unknown or rotated enclave key; re-attest")
