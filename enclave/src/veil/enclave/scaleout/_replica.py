"""A replica's side of key release, and the shared state it serves with.

``Replica.join`` runs when the enclave starts, after its audit log key exists and before any
request can be opened:

1. it asks the coordinator for a challenge with a fresh nonce, and verifies the coordinator's
   evidence under the coordinator policy this replica was started with (part of its own
   measurement): the coordinator is attested before anything is sent to it;
2. it makes an ephemeral X25519 key and claims naming that key, its replica id and its audit
   log key, gets its TEE's evidence over them bound to the challenge, and asks for release;
3. it opens the sealed ``KeyBundle`` with the ephemeral key, checks that every epoch's claims
   name the attested coordinator key and manifest, and keeps the epochs, the model-store key
   and its certificate. The ephemeral key is dropped.

Until ``join`` succeeds the replica holds no key: a replica whose evidence the manifest does
not allow never opens a request (``KeyReleaseRefused`` ends its start). ``refresh`` repeats the
whole exchange (fresh nonce, fresh challenge, fresh evidence) every ``refresh_at`` to pick up
the coordinator's next epoch ahead of its publication.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.enclave.scaleout._coordinator import bundle_info
from veil.enclave.scaleout._epochs import SharedKeyRing, epoch_from_proto
from veil.enclave.scaleout._pg import PostgresPool, PostgresReplayStore
from veil.enclave.scaleout._registry import PostgresModelStore
from veil.enclave.tee._base import RawEvidence, TeeProvider
from veil.sdk.attestation import AttestationPolicy
from veil.sdk.errors import AttestationError, AttestationFailure, ProtocolError
from veil.sdk.evidence import Evidence, from_ms, to_ms, verify_enclave
from veil.sdk.protocol import NONCE_LEN, PROTOCOL_VERSION, Suite, claims_digest, report_data_for
from veil.v1 import attestation_pb2, scaleout_pb2, scaleout_pb2_grpc

if TYPE_CHECKING:
    from veil.enclave._gateway import Gateway
    from veil.privacy import BudgetConfig, BudgetLedger

__all__ = [
    "KeyReleaseRefused",
    "ReleasedTee",
    "Replica",
    "ReplicaSettings",
    "replica_measurement",
]

log = logging.getLogger("veil.enclave")
RELEASE_TIMEOUT_SECONDS = 20.0


def replica_measurement(base: bytes, coordinator_policy_sha256: bytes) -> bytes:
    """What a replica reports (simulated TEE): ``veil measure``'s value bound to the SHA-256 of
    the coordinator policy file it trusts, so a replica pointed at another coordinator is
    another replica."""
    h = hashlib.sha384()
    h.update(b"veil/replica/v1\0" + base + coordinator_policy_sha256)
    return h.digest()


class KeyReleaseRefused(AttestationError):
    """The coordinator refused this replica's evidence, or could not be attested."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ReplicaSettings:
    """How a replica joins its deployment (``veil serve --state postgres``)."""

    coordinator: str  # host:port of the coordinator's KeyReleaseService
    coordinator_policy: AttestationPolicy  # what the coordinator's evidence must satisfy
    coordinator_policy_sha256: bytes  # SHA-256 of the policy file: bound into the measurement
    database_url: str
    replica_id: str = ""

    def __repr__(self) -> str:  # the database URL may hold a password
        return f"ReplicaSettings(coordinator={self.coordinator!r}, replica_id={self.replica_id!r})"


class ReleasedTee:
    """The local TEE for evidence, with data-at-rest keys derived from the released key.

    Every replica derives the same key per label, so models and datasets sealed by one replica
    on the shared volume open on every other, and only on attested replicas.
    """

    def __init__(self, tee: TeeProvider, root_key: bytes) -> None:
        self._tee = tee
        self._root = root_key

    @property
    def name(self) -> str:
        return self._tee.name

    def evidence(self, report_data: bytes, measurement: bytes) -> RawEvidence:
        return self._tee.evidence(report_data, measurement)

    def sealing_key(self, label: bytes) -> bytes:
        return HKDF(
            algorithm=hashes.SHA256(), length=32, salt=b"veil/v1/replica-at-rest", info=label
        ).derive(self._root)


@dataclass(frozen=True)
class Released:
    """What one key release delivered, checked."""

    epochs: list[scaleout_pb2.SharedEpoch]
    model_key: bytes
    certificate: bytes
    refresh_at: datetime
    coordinator_key: bytes
    manifest_sha256: bytes


class Replica:
    """A replica's shared state: key epochs from the coordinator, PostgreSQL for the rest."""

    def __init__(
        self,
        settings: ReplicaSettings,
        *,
        clock: Callable[[], datetime] = _utcnow,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.settings = settings
        self.replica_id = settings.replica_id or secrets.token_hex(6)
        self.clock = clock
        self._random = random
        self.pool = PostgresPool(settings.database_url)
        self._channel = grpc.insecure_channel(settings.coordinator)
        self._stub = scaleout_pb2_grpc.KeyReleaseServiceStub(self._channel)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._joined: tuple[TeeProvider, bytes, bytes, str] | None = None
        self.keys: SharedKeyRing | None = None
        self.model_key = b""
        self.certificate = b""
        self.coordinator_key = b""
        self.manifest_sha256 = b""
        self.refresh_at = clock()
        self.on_certificate: Callable[[bytes], None] = lambda _c: None

    @property
    def log_name(self) -> str:
        """This replica's audit log key name: distinct per replica, so merged logs stay apart."""
        return f"veil-replica-{self.replica_id}"

    def bind_measurement(self, base: bytes) -> bytes:
        """The replica's measurement: the enclave's, plus the coordinator it trusts."""
        return replica_measurement(base, self.settings.coordinator_policy_sha256)

    # -- key release ----------------------------------------------------------------------

    def join(
        self, tee: TeeProvider, *, measurement: bytes, log_key: bytes, log_origin: str
    ) -> None:
        """Attest the coordinator, prove this replica, receive the keys; raise if refused."""
        self._joined = (tee, measurement, log_key, log_origin)
        released = self._release()
        now = self.clock()
        self.keys = SharedKeyRing([epoch_from_proto(e) for e in released.epochs], self.clock)
        self.model_key = released.model_key
        self.coordinator_key = released.coordinator_key
        self.manifest_sha256 = released.manifest_sha256
        self.certificate = released.certificate
        self.refresh_at = released.refresh_at
        log.info(
            "key release: joined as replica %s (%d epoch(s), next refresh in %.0f s)",
            self.replica_id,
            len(released.epochs),
            (released.refresh_at - now).total_seconds(),
        )

    def refresh(self) -> None:
        """Run key release again; merge the new epochs, keep the ones still valid."""
        released = self._release()
        if not hmac.compare_digest(released.model_key, self.model_key):
            raise KeyReleaseRefused(
                AttestationFailure.POLICY, "the coordinator released another model-store key"
            )
        if not hmac.compare_digest(released.coordinator_key, self.coordinator_key):
            # A restarted coordinator signs with a new key: epochs and certificate move with it.
            self.coordinator_key = released.coordinator_key
        assert self.keys is not None
        self.keys.merge([epoch_from_proto(e) for e in released.epochs], self.clock())
        with self._lock:
            self.certificate = released.certificate
            self.refresh_at = released.refresh_at
        self.on_certificate(released.certificate)

    def _release(self) -> Released:
        if self._joined is None:
            raise ProtocolError("join before refreshing keys")
        tee, measurement, log_key, log_origin = self._joined
        nonce = self._random(NONCE_LEN)
        try:
            challenge = self._stub.Challenge(
                scaleout_pb2.ChallengeRequest(nonce=nonce), timeout=RELEASE_TIMEOUT_SECONDS
            )
        except grpc.RpcError as exc:
            raise KeyReleaseRefused(
                AttestationFailure.UNSUPPORTED, f"coordinator unreachable: {exc.code().name}"
            ) from exc
        now = self.clock()
        coordinator = verify_enclave(
            Evidence.from_proto(challenge.coordinator),
            nonce=nonce,
            policy=self.settings.coordinator_policy,
            now=now,
        )
        manifest_sha256 = hashlib.sha256(challenge.manifest).digest()
        if coordinator.claims.manifest_sha256 != manifest_sha256:
            raise KeyReleaseRefused(
                AttestationFailure.UNBOUND_KEY, "coordinator's evidence binds another manifest"
            )
        coordinator_key = coordinator.claims.audit_log_key
        ephemeral = x25519.X25519PrivateKey.generate()
        claims = attestation_pb2.EnclaveClaims(
            protocol_version=PROTOCOL_VERSION,
            key_id=self.replica_id,
            keys=[
                attestation_pb2.SuiteKey(
                    suite=int(Suite.X25519_SHA256_AES256GCM),
                    public_key=ephemeral.public_key().public_bytes_raw(),
                )
            ],
            issued_at_ms=to_ms(now),
            expires_at_ms=to_ms(now + timedelta(minutes=5)),
            measurement_hex=measurement.hex() if tee.name == "simulated" else "",
            audit_log_key=log_key,
            audit_log_origin=log_origin,
        ).SerializeToString(deterministic=True)
        digest = claims_digest(claims)
        raw = tee.evidence(report_data_for(challenge.challenge, digest), measurement)
        evidence = Evidence(
            tee=raw.tee, report=raw.report, cert_chain=raw.cert_chain, claims=claims
        )
        try:
            response = self._stub.Release(
                scaleout_pb2.ReleaseRequest(
                    challenge=challenge.challenge, evidence=evidence.to_proto()
                ),
                timeout=RELEASE_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as exc:
            raise KeyReleaseRefused(
                AttestationFailure.POLICY,
                f"coordinator refused key release: {exc.details() or exc.code().name}",
            ) from exc
        try:
            plain = Suite.X25519_SHA256_AES256GCM.hpke.decrypt(
                response.sealed_bundle, ephemeral, bundle_info(challenge.challenge, digest)
            )
            bundle = scaleout_pb2.KeyBundle.FromString(plain)
        except Exception as exc:  # any HPKE or parse failure is one refusal
            raise KeyReleaseRefused(
                AttestationFailure.MALFORMED, "key bundle could not be opened"
            ) from exc
        for epoch in bundle.epochs:
            msg = attestation_pb2.EnclaveClaims.FromString(epoch.claims)
            if msg.audit_log_key != coordinator_key or msg.manifest_sha256 != manifest_sha256:
                raise KeyReleaseRefused(
                    AttestationFailure.UNBOUND_KEY, "a released epoch names another coordinator"
                )
        if len(bundle.model_key) != 32 or not bundle.epochs:
            raise KeyReleaseRefused(AttestationFailure.MALFORMED, "key bundle is incomplete")
        return Released(
            epochs=list(bundle.epochs),
            model_key=bytes(bundle.model_key),
            certificate=bytes(bundle.certificate),
            refresh_at=from_ms(bundle.refresh_at_ms),
            coordinator_key=bytes(coordinator_key),
            manifest_sha256=manifest_sha256,
        )

    def start_refreshing(self) -> None:
        """Refresh in the background at each ``refresh_at``; on failure retry every 2 s."""

        def loop() -> None:
            while True:
                with self._lock:
                    wait = max(0.5, (self.refresh_at - self.clock()).total_seconds())
                if self._stop.wait(wait):
                    return
                try:
                    self.refresh()
                except Exception as exc:  # keep serving the epochs held; try again soon
                    log.warning("key refresh failed (retrying): %s", exc)
                    with self._lock:
                        self.refresh_at = self.clock() + timedelta(seconds=2)

        self._thread = threading.Thread(target=loop, name="veil-key-refresh", daemon=True)
        self._thread.start()

    # -- what the enclave serves with --------------------------------------------------------

    @property
    def key_ring(self) -> SharedKeyRing:
        if self.keys is None:
            raise ProtocolError("this replica has not joined its deployment")
        return self.keys

    def released_tee(self, tee: TeeProvider) -> ReleasedTee:
        """``tee`` with data-at-rest keys derived from the released model-store key."""
        if not self.model_key:
            raise ProtocolError("this replica has not joined its deployment")
        return ReleasedTee(tee, self.model_key)

    def attach(self, gateway: Gateway) -> None:
        """Send this replica's certificate with every receipt, the newest after a refresh."""
        gateway.replica_certificate = self.certificate

        def update(certificate: bytes) -> None:
            gateway.replica_certificate = certificate

        self.on_certificate = update
        self.start_refreshing()

    # -- shared state ---------------------------------------------------------------------

    def model_store(
        self,
        root: Path,
        *,
        storage_key: Callable[[str], bytes],
        clock: Callable[[], datetime],
        headroom: int,
    ) -> PostgresModelStore:
        return PostgresModelStore(
            root, self.pool, storage_key=storage_key, clock=clock, headroom=headroom
        )

    def replay_store(self, window_ms: int) -> PostgresReplayStore:
        return PostgresReplayStore(self.pool, window_ms)

    def ledger(self, default_budget: BudgetConfig) -> BudgetLedger:
        from veil.privacy import PostgresBudgetLedger

        return PostgresBudgetLedger(self.settings.database_url, default_budget=default_budget)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._channel.close()
        self.pool.close()
