"""The coordinator: holds the signed manifest and releases the shared keys to attested replicas.

On the pattern of Edgeless Contrast's coordinator (a manifest of allowed workloads, enforced by
an attested service that hands out secrets) and Azure's secure key release (a key is released
only against evidence that satisfies a policy, wrapped to a key bound into that evidence):

1. ``challenge(nonce)``: the coordinator's own evidence, bound to the replica's nonce and to
   the coordinator's claims (its Ed25519 signing key, the manifest's SHA-256), plus a fresh
   single-use challenge, the manifest and the owner's signature of it.
2. ``release(challenge, evidence)``: the replica's evidence must answer that challenge
   (REPORT_DATA = SHA-512(challenge ‖ SHA-256(claims))) and satisfy the manifest's replica
   policy (the SDK's ``verify_enclave``: the same code that verifies hardware for clients).
   Only then is a ``KeyBundle`` (the live key epochs, the model-store key, the replica's
   certificate) sealed with HPKE to the ephemeral X25519 key in the replica's claims. Any
   failure raises ``AttestationError`` and sends nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.enclave._files import write_private
from veil.enclave.scaleout._epochs import EpochSchedule
from veil.enclave.tee._base import TeeProvider
from veil.sdk.errors import AttestationError, AttestationFailure, ConfigError, ProtocolError
from veil.sdk.evidence import Evidence, to_ms, verify_enclave
from veil.sdk.protocol import NONCE_LEN, PROTOCOL_VERSION, Suite, claims_digest, report_data_for
from veil.sdk.replicas import (
    CERTIFICATE_CONTEXT,
    Manifest,
    certificate_statement,
    verify_manifest,
)
from veil.v1 import attestation_pb2, scaleout_pb2

__all__ = [
    "CHALLENGE_SECONDS",
    "KEY_BUNDLE_INFO",
    "Admission",
    "Coordinator",
    "bundle_info",
    "coordinator_measurement",
]

log = logging.getLogger("veil.coordinator")
KEY_BUNDLE_INFO = b"veil/v1/key-release"
CHALLENGE_SECONDS = 60
MAX_PENDING_CHALLENGES = 10_000


def bundle_info(challenge: bytes, replica_claims_digest: bytes) -> bytes:
    """HPKE info of a sealed key bundle: binds it to one challenge and one replica's claims."""
    return KEY_BUNDLE_INFO + challenge + replica_claims_digest


def coordinator_measurement(code_manifest: bytes, owner_key: bytes) -> bytes:
    """What the simulated TEE reports for a coordinator: its code and its pinned owner key."""
    h = hashlib.sha384()
    h.update(b"veil/coordinator/v1\0")
    h.update(len(code_manifest).to_bytes(8, "big") + code_manifest)
    h.update(owner_key)
    return h.digest()


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Admission:
    """One key-release decision, as the coordinator logs and counts it."""

    replica: str
    measurement: str
    admitted: bool
    reason: str


class Coordinator:
    """The key-release logic, free of gRPC (``_coordinator_service`` serves it)."""

    def __init__(
        self,
        *,
        manifest: bytes,
        manifest_signature: bytes,
        owner_key: ed25519.Ed25519PublicKey,
        tee: TeeProvider,
        measurement: bytes,
        data_dir: Path,
        clock: Callable[[], datetime] = _utcnow,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.manifest: Manifest = verify_manifest(manifest, manifest_signature, owner_key)
        self._signature = manifest_signature
        self.tee = tee
        self.measurement = measurement
        self.clock = clock
        self._random = random
        self._signing = ed25519.Ed25519PrivateKey.from_private_bytes(
            self._sealed_secret(data_dir, "signing-key")
        )
        self.public_key = self._signing.public_key().public_bytes_raw()
        self.origin = f"veil-coordinator/{self.manifest.deployment}"
        self.epochs = EpochSchedule(
            lifetime=timedelta(seconds=self.manifest.epoch_seconds),
            coordinator_key=self.public_key,
            coordinator_origin=self.origin,
            manifest_sha256=self.manifest.sha256,
        )
        self.model_key = self._sealed_secret(data_dir, "model-store-key")
        self._challenges: dict[bytes, datetime] = {}
        self._lock = threading.Lock()
        self.admissions: list[Admission] = []
        now = clock()
        self._claims = attestation_pb2.EnclaveClaims(
            protocol_version=PROTOCOL_VERSION,
            key_id="coordinator-" + secrets.token_hex(8),
            keys=[  # a key no one seals to: the coordinator's claims name it by its signing key
                attestation_pb2.SuiteKey(
                    suite=int(Suite.X25519_SHA256_AES256GCM),
                    public_key=x25519.X25519PrivateKey.generate().public_key().public_bytes_raw(),
                )
            ],
            issued_at_ms=to_ms(now),
            expires_at_ms=to_ms(now + timedelta(days=3650)),
            measurement_hex=measurement.hex() if tee.name == "simulated" else "",
            audit_log_key=self.public_key,
            audit_log_origin=self.origin,
            manifest_sha256=self.manifest.sha256,
        ).SerializeToString(deterministic=True)

    def _sealed_secret(self, data_dir: Path, name: str) -> bytes:
        """A 32-byte secret of the deployment, kept sealed at rest to this coordinator's TEE
        (created on first start): the model-store key, and the signing key, so a restarted
        coordinator releases the same model key and certifies under the same key."""
        path = data_dir / f"{name}.sealed"
        wrap = AESGCM(self.tee.sealing_key(b"coordinator/" + name.encode()))
        aad = f"veil/coordinator/{name}/{self.manifest.deployment}".encode()
        if path.exists():
            blob = path.read_bytes()
            try:
                return wrap.decrypt(blob[:12], blob[12:], aad)
            except Exception as exc:
                raise ConfigError(f"{path} cannot be opened by this TEE") from exc
        secret = self._random(32)
        nonce = self._random(12)
        write_private(path, nonce + wrap.encrypt(nonce, secret, aad))
        return secret

    # -- step 1 ---------------------------------------------------------------------------

    def challenge(self, nonce: bytes) -> scaleout_pb2.ChallengeResponse:
        if len(nonce) != NONCE_LEN:
            raise ProtocolError(f"nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
        now = self.clock()
        raw = self.tee.evidence(
            report_data_for(nonce, claims_digest(self._claims)), self.measurement
        )
        challenge = self._random(NONCE_LEN)
        with self._lock:
            self._challenges = {c: t for c, t in self._challenges.items() if t > now}
            if len(self._challenges) >= MAX_PENDING_CHALLENGES:
                raise ProtocolError("too many key-release challenges pending; retry later")
            self._challenges[challenge] = now + timedelta(seconds=CHALLENGE_SECONDS)
        evidence = Evidence(
            tee=raw.tee, report=raw.report, cert_chain=raw.cert_chain, claims=self._claims
        )
        return scaleout_pb2.ChallengeResponse(
            coordinator=evidence.to_proto(),
            challenge=challenge,
            manifest=self.manifest.raw,
            manifest_signature=self._signature,
        )

    # -- step 2 ---------------------------------------------------------------------------

    def release(self, request: scaleout_pb2.ReleaseRequest) -> scaleout_pb2.ReleaseResponse:
        now = self.clock()
        with self._lock:
            deadline = self._challenges.pop(bytes(request.challenge), None)
        if deadline is None or now > deadline:
            self._note("?", "", admitted=False, reason="unknown or expired challenge")
            raise AttestationError(
                AttestationFailure.STALE_NONCE, "key release: unknown or expired challenge"
            )
        evidence = Evidence.from_proto(request.evidence)
        try:
            attested = verify_enclave(
                evidence,
                nonce=bytes(request.challenge),
                policy=self.manifest.attestation_policy,
                now=now,
                challenge_issued_at=deadline - timedelta(seconds=CHALLENGE_SECONDS),
            )
        except AttestationError as exc:
            self._note("?", _reported_measurement(evidence), admitted=False, reason=str(exc))
            raise
        claims = attested.claims
        replica_key = claims.keys.get(Suite.X25519_SHA256_AES256GCM)
        if replica_key is None or len(claims.audit_log_key) != 32 or not claims.audit_log_origin:
            self._note(claims.key_id, attested.measurement, admitted=False, reason="claims")
            raise AttestationError(
                AttestationFailure.MALFORMED,
                "key release: replica claims need an X25519 key and an audit log key",
            )
        statement = certificate_statement(
            replica=claims.key_id,
            tee=attested.tee,
            measurement=attested.measurement,
            log_origin=claims.audit_log_origin,
            log_key=claims.audit_log_key,
            manifest_sha256=self.manifest.sha256,
            challenge=bytes(request.challenge),
            evidence_sha256=hashlib.sha256(
                request.evidence.SerializeToString(deterministic=True)
            ).digest(),
            issued_at=now,
        )
        certificate = scaleout_pb2.ReplicaCertificate(
            statement=statement,
            signature=self._signing.sign(CERTIFICATE_CONTEXT + statement),
            evidence=request.evidence,
        )
        bundle = scaleout_pb2.KeyBundle(
            epochs=self.epochs.live(now),
            model_key=self.model_key,
            certificate=certificate.SerializeToString(deterministic=True),
            refresh_at_ms=to_ms(self.epochs.refresh_at(now)),
        )
        public = x25519.X25519PublicKey.from_public_bytes(replica_key)
        sealed = Suite.X25519_SHA256_AES256GCM.hpke.encrypt(
            bundle.SerializeToString(deterministic=True),
            public,
            bundle_info(bytes(request.challenge), attested.claims_digest),
        )
        self._note(claims.key_id, attested.measurement, admitted=True, reason="")
        return scaleout_pb2.ReleaseResponse(sealed_bundle=sealed)

    def _note(self, replica: str, measurement: str, *, admitted: bool, reason: str) -> None:
        decision = Admission(replica, measurement, admitted, reason)
        with self._lock:
            self.admissions.append(decision)
            del self.admissions[:-1000]
        if admitted:
            log.info("key release: replica %s admitted (measurement %s)", replica, measurement)
        else:
            log.warning(
                "key release refused: replica %s measurement %s: %s", replica, measurement, reason
            )


def _reported_measurement(evidence: Evidence) -> str:
    """The measurement a refused report claims (for the log only; never trusted)."""
    from veil.sdk.attestation.snp_report import SnpReport

    try:
        return SnpReport.from_bytes(evidence.report).measurement.hex()
    except Exception:
        return "unparsable"
