"""The enclave's sealing keys: generated in memory at start, rotated per epoch, never on disk."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from veil.sdk.errors import ProtocolError
from veil.sdk.evidence import from_ms, to_ms
from veil.sdk.protocol import PROTOCOL_VERSION, Suite, claims_digest, encode_hybrid
from veil.v1 import attestation_pb2

__all__ = ["Epochs", "KeyEpoch", "KeyRing", "UnknownKeyError", "suite_keys"]


def suite_keys(
    x: x25519.X25519PrivateKey,
    hybrid_m: mlkem.MLKEM768PrivateKey,
    hybrid_x: x25519.X25519PrivateKey,
) -> list[attestation_pb2.SuiteKey]:
    """The public keys an epoch publishes in its claims, one per suite."""
    return [
        attestation_pb2.SuiteKey(
            suite=int(Suite.X25519_SHA256_AES256GCM),
            public_key=x.public_key().public_bytes_raw(),
        ),
        attestation_pb2.SuiteKey(
            suite=int(Suite.MLKEM768X25519_SHA256_AES256GCM),
            public_key=encode_hybrid(hybrid_m.public_key(), hybrid_x.public_key()),
        ),
    ]


PrivateKey = x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey
_MATERIAL_LEN = 32 + 64 + 32


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
    # x25519 (32) | ML-KEM-768 seed (64) | hybrid x25519 (32): what another process of the
    # same enclave needs to rebuild ``private_keys`` (``to_wire``/``from_wire``); never on disk
    material: bytes = field(default=b"", repr=False, compare=False)

    def to_wire(self) -> tuple[str, bytes, bytes, int]:
        """The epoch for a worker process of this enclave (over its private control channel)."""
        if not self.material:
            raise ProtocolError("this key epoch cannot be shared: no key material kept")
        return (self.key_id, self.material, self.claims, to_ms(self.expires_at))

    @classmethod
    def from_wire(cls, wire: tuple[str, bytes, bytes, int]) -> KeyEpoch:
        key_id, material, claims, expires_ms = wire
        if len(material) != _MATERIAL_LEN:
            raise ProtocolError("key epoch material is malformed")
        x = x25519.X25519PrivateKey.from_private_bytes(material[:32])
        hybrid_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(material[32:96])
        hybrid_x = x25519.X25519PrivateKey.from_private_bytes(material[96:])
        return cls(
            key_id=key_id,
            private_keys={
                Suite.X25519_SHA256_AES256GCM: x,
                Suite.MLKEM768X25519_SHA256_AES256GCM: hpke.MLKEM768X25519PrivateKey(
                    hybrid_m, hybrid_x
                ),
            },
            claims=claims,
            digest=claims_digest(claims),
            expires_at=from_ms(expires_ms),
            material=material,
        )

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
            keys=suite_keys(x, hybrid_m, hybrid_x),
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
            material=x.private_bytes_raw()
            + hybrid_m.private_bytes_raw()
            + hybrid_x.private_bytes_raw(),
        )


Epochs = tuple[KeyEpoch, KeyEpoch | None]  # (current, previous)


class KeyRing:
    """The current epoch plus the previous one (so requests in flight at a rotation still open).

    A worker process's ring is fed by the supervisor's: ``install`` when it pushes a rotation,
    and ``on_miss`` (a pull) when a request names an epoch this ring does not hold.
    """

    def __init__(self, first: KeyEpoch, *, on_miss: Callable[[], Epochs] | None = None) -> None:
        self._lock = threading.Lock()
        self._current = first
        self._previous: KeyEpoch | None = None
        self._on_miss = on_miss

    @property
    def epochs(self) -> Epochs:
        with self._lock:
            return self._current, self._previous

    def install(self, current: KeyEpoch, previous: KeyEpoch | None) -> None:
        """Take the epochs another ring holds (a worker's, from its supervisor).

        An answer older than what is held (a pull overtaken by a push) is ignored.
        """
        with self._lock:
            if current.key_id != self._current.key_id and (
                current.expires_at < self._current.expires_at
            ):
                return
            self._current, self._previous = current, previous

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
        found = self._find(digest, now)
        if found is None and self._on_miss is not None:
            self.install(*self._on_miss())
            found = self._find(digest, now)
        if found is None:
            raise UnknownKeyError(
                "request is sealed to an unknown or rotated enclave key; re-attest"
            )
        return found

    def _find(self, digest: bytes, now: datetime) -> KeyEpoch | None:
        with self._lock:
            candidates = [e for e in (self._current, self._previous) if e is not None]
        for epoch in candidates:
            if secrets.compare_digest(epoch.digest, digest):
                return None if now >= epoch.expires_at else epoch
        return None
