"""Shared key epochs: made by the coordinator, carried in key bundles, held by every replica.

An epoch is the sealing key pair of both suites and the ``EnclaveClaims`` every replica
publishes while it is current. Its claims name the coordinator's key as ``audit_log_key`` and
carry the manifest's SHA-256 (protocol 1.3): the claims digest is the same on every replica, so
a request sealed after attesting one replica opens on any other.

Schedule (``lifetime`` L, from the manifest): epoch k is published from ``issued_at`` and
expires at ``issued_at + L``; epoch k+1 is made at ``issued_at + L/4`` and published from
``issued_at + L/2``. Replicas refresh every L/8, so each one holds an epoch for two refresh
periods before any client can see it, and keeps the old one until it expires: a rotation never
fails a request sealed to either.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from veil.enclave._keys import KeyEpoch, KeyRing, PrivateKey, UnknownKeyError, suite_keys
from veil.sdk.errors import ProtocolError
from veil.sdk.evidence import from_ms, to_ms
from veil.sdk.protocol import PROTOCOL_VERSION, Suite, claims_digest
from veil.v1 import attestation_pb2, scaleout_pb2

__all__ = ["EpochSchedule", "SharedKeyRing", "epoch_from_proto", "new_shared_epoch"]


def new_shared_epoch(
    *,
    issued_at: datetime,
    lifetime: timedelta,
    coordinator_key: bytes,
    coordinator_origin: str,
    manifest_sha256: bytes,
) -> scaleout_pb2.SharedEpoch:
    """A fresh epoch: both suites' private keys and the claims that publish their public keys."""
    x = x25519.X25519PrivateKey.generate()
    hybrid_m = mlkem.MLKEM768PrivateKey.generate()
    hybrid_x = x25519.X25519PrivateKey.generate()
    claims = attestation_pb2.EnclaveClaims(
        protocol_version=PROTOCOL_VERSION,
        key_id=secrets.token_hex(8),
        keys=suite_keys(x, hybrid_m, hybrid_x),
        issued_at_ms=to_ms(issued_at),
        expires_at_ms=to_ms(issued_at + lifetime),
        measurement_hex="",  # replicas' reports are authoritative, each measures itself
        audit_log_key=coordinator_key,
        audit_log_origin=coordinator_origin,
        manifest_sha256=manifest_sha256,
    ).SerializeToString(deterministic=True)
    return scaleout_pb2.SharedEpoch(
        claims=claims,
        x25519_private=x.private_bytes_raw(),
        mlkem_seed=hybrid_m.private_bytes_raw(),
        hybrid_x25519_private=hybrid_x.private_bytes_raw(),
    )


def epoch_from_proto(msg: scaleout_pb2.SharedEpoch) -> tuple[KeyEpoch, datetime]:
    """The ``KeyEpoch`` a replica opens requests with, and when it is published."""
    claims = attestation_pb2.EnclaveClaims()
    claims.ParseFromString(msg.claims)
    try:
        private: dict[Suite, PrivateKey] = {
            Suite.X25519_SHA256_AES256GCM: x25519.X25519PrivateKey.from_private_bytes(
                msg.x25519_private
            ),
            Suite.MLKEM768X25519_SHA256_AES256GCM: hpke.MLKEM768X25519PrivateKey(
                mlkem.MLKEM768PrivateKey.from_seed_bytes(msg.mlkem_seed),
                x25519.X25519PrivateKey.from_private_bytes(msg.hybrid_x25519_private),
            ),
        }
    except ValueError as exc:
        raise ProtocolError("key bundle holds a malformed epoch key") from exc
    epoch = KeyEpoch(
        key_id=claims.key_id,
        private_keys=private,
        claims=bytes(msg.claims),
        digest=claims_digest(msg.claims),
        expires_at=from_ms(claims.expires_at_ms),
    )
    return epoch, from_ms(claims.issued_at_ms)


class EpochSchedule:
    """The coordinator's epochs: makes the next one ahead of time, drops expired ones."""

    def __init__(
        self,
        *,
        lifetime: timedelta,
        coordinator_key: bytes,
        coordinator_origin: str,
        manifest_sha256: bytes,
    ) -> None:
        self.lifetime = lifetime
        self._key = coordinator_key
        self._origin = coordinator_origin
        self._manifest = manifest_sha256
        self._lock = threading.Lock()
        self._epochs: list[tuple[datetime, scaleout_pb2.SharedEpoch]] = []

    def _make(self, issued_at: datetime) -> None:
        epoch = new_shared_epoch(
            issued_at=issued_at,
            lifetime=self.lifetime,
            coordinator_key=self._key,
            coordinator_origin=self._origin,
            manifest_sha256=self._manifest,
        )
        self._epochs.append((issued_at, epoch))

    def live(self, now: datetime) -> list[scaleout_pb2.SharedEpoch]:
        """Every unexpired epoch, oldest first, the next one included once it is due."""
        with self._lock:
            self._epochs = [(t, e) for t, e in self._epochs if now < t + self.lifetime]
            if not self._epochs:
                self._make(now)
            newest = self._epochs[-1][0]
            while now >= newest + self.lifetime / 4:
                newest = max(newest + self.lifetime / 2, now)
                self._make(newest)
            return [e for _, e in self._epochs]

    def refresh_at(self, now: datetime) -> datetime:
        return now + self.lifetime / 8

    def rotate(self, now: datetime) -> None:
        """Make a new epoch published at once (an operator's rotation); old ones stay valid."""
        with self._lock:
            self._make(now)


class SharedKeyRing(KeyRing):
    """A replica's epochs from the coordinator: publishes the newest already issued, opens any
    unexpired one. Local generation (``rotate``) is refused: epochs come from key release."""

    def __init__(
        self, epochs: Iterable[tuple[KeyEpoch, datetime]], clock: Callable[[], datetime]
    ) -> None:
        self._all: dict[str, tuple[KeyEpoch, datetime]] = {}
        self._guard = threading.Lock()
        self._clock = clock
        self.merge(epochs, clock())
        super().__init__(self._published(clock()))

    def merge(self, epochs: Iterable[tuple[KeyEpoch, datetime]], now: datetime) -> None:
        with self._guard:
            for epoch, issued in epochs:
                self._all.setdefault(epoch.key_id, (epoch, issued))
            self._all = {k: v for k, v in self._all.items() if now < v[0].expires_at}
            if not any(issued <= now for _, issued in self._all.values()):
                raise UnknownKeyError("no shared key epoch is valid now")

    def _published(self, now: datetime) -> KeyEpoch:
        with self._guard:
            issued = [(i, e) for e, i in self._all.values() if i <= now and now < e.expires_at]
        if not issued:
            raise UnknownKeyError("no shared key epoch is valid now; waiting for key release")
        return max(issued, key=lambda pair: pair[0])[1]

    @property
    def current(self) -> KeyEpoch:
        return self._published(self._clock())

    def rotate(self, new: KeyEpoch, *, keep_previous: bool = True) -> None:
        raise ProtocolError("a replica's key epochs come from the coordinator, not from rotate")

    def find(self, digest: bytes, now: datetime) -> KeyEpoch:
        with self._guard:
            candidates = [e for e, _ in self._all.values()]
        for epoch in candidates:
            if secrets.compare_digest(epoch.digest, digest):
                if now >= epoch.expires_at:
                    break
                return epoch
        raise UnknownKeyError("request is sealed to an unknown or rotated enclave key; re-attest")

    def __len__(self) -> int:
        with self._guard:
            return len(self._all)
