"""Attested key release, in process: manifest, challenges, certificates, epochs, derived keys."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from postgres_support import PostgresServer, postgres_server
from scaleout_support import policy_toml

from veil.enclave.scaleout import (
    Coordinator,
    KeyReleaseRefused,
    ReleasedTee,
    Replica,
    ReplicaSettings,
    serve_coordinator,
)
from veil.enclave.scaleout._epochs import EpochSchedule, SharedKeyRing, epoch_from_proto
from veil.enclave.tee._simulated import SimulatedSnp
from veil.sdk.attestation import AttestationPolicy, parse_policy
from veil.sdk.errors import (
    AttestationError,
    AttestationFailure,
    AuditFailure,
    AuditLogError,
    ConfigError,
)
from veil.sdk.evidence import EnclaveClaims, Evidence, to_ms
from veil.sdk.protocol import PROTOCOL_VERSION, Suite, claims_digest, report_data_for
from veil.sdk.replicas import (
    Manifest,
    policy_for,
    sign_manifest,
    verify_manifest,
    verify_replica_certificate,
)
from veil.v1 import attestation_pb2, scaleout_pb2

__all__ = ["postgres_server"]

GOOD = b"\x11" * 48
BAD = b"\x22" * 48
COORD = b"\x33" * 48
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def tee(tmp_path: Path) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tmp_path / "platform")


@pytest.fixture
def owner() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _manifest(tee: SimulatedSnp, seconds: int = 60) -> bytes:
    return Manifest.build(
        deployment="unit", policy_toml=policy_toml(tee.root_pem, [GOOD]), epoch_seconds=seconds
    )


def _coordinator(
    tee: SimulatedSnp,
    owner: ed25519.Ed25519PrivateKey,
    data_dir: Path,
    clock: Clock | None = None,
) -> Coordinator:
    manifest = _manifest(tee)
    return Coordinator(
        manifest=manifest,
        manifest_signature=sign_manifest(manifest, owner),
        owner_key=owner.public_key(),
        tee=tee,
        measurement=COORD,
        data_dir=data_dir,
        clock=clock or Clock(datetime.now(UTC)),
    )


def _request(
    coordinator: Coordinator, tee: SimulatedSnp, measurement: bytes, *, bind: bytes | None = None
) -> tuple[scaleout_pb2.ReleaseRequest, x25519.X25519PrivateKey]:
    """What a replica sends: evidence over its claims, bound to a fresh challenge."""
    challenge = coordinator.challenge(b"\x00" * 32).challenge
    ephemeral = x25519.X25519PrivateKey.generate()
    now = coordinator.clock()
    claims = attestation_pb2.EnclaveClaims(
        protocol_version=PROTOCOL_VERSION,
        key_id="replica-a",
        keys=[
            attestation_pb2.SuiteKey(
                suite=int(Suite.X25519_SHA256_AES256GCM),
                public_key=ephemeral.public_key().public_bytes_raw(),
            )
        ],
        issued_at_ms=to_ms(now),
        expires_at_ms=to_ms(now + timedelta(minutes=5)),
        measurement_hex=measurement.hex(),
        audit_log_key=b"\x05" * 32,
        audit_log_origin="veil-replica-a",
    ).SerializeToString(deterministic=True)
    raw = tee.evidence(report_data_for(bind or challenge, claims_digest(claims)), measurement)
    evidence = Evidence(tee=raw.tee, report=raw.report, cert_chain=raw.cert_chain, claims=claims)
    return scaleout_pb2.ReleaseRequest(challenge=challenge, evidence=evidence.to_proto()), ephemeral


def test_manifest_is_signed_canonical_and_checked(
    tee: SimulatedSnp, owner: ed25519.Ed25519PrivateKey
) -> None:
    raw = _manifest(tee)
    sig = sign_manifest(raw, owner)
    manifest = verify_manifest(raw, sig, owner.public_key())
    assert manifest.deployment == "unit" and manifest.epoch_seconds == 60
    assert manifest.sha256 == hashlib.sha256(raw).digest()
    assert manifest.attestation_policy.expected_measurements == frozenset({GOOD})
    with pytest.raises(AttestationError) as info:
        verify_manifest(raw.replace(b"unit", b"unjt"), sig, owner.public_key())
    assert info.value.reason == AttestationFailure.POLICY
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(AttestationError):
        verify_manifest(raw, sig, other)
    with pytest.raises(ConfigError, match="canonical"):
        Manifest.parse(raw.replace(b'{"', b'{ "', 1))
    with pytest.raises(ConfigError, match="epoch_seconds"):
        Manifest.build(deployment="x", policy_toml=policy_toml(tee.root_pem, []), epoch_seconds=5)


def test_release_only_to_allowed_evidence_and_only_once(
    tee: SimulatedSnp, owner: ed25519.Ed25519PrivateKey, tmp_path: Path
) -> None:
    coordinator = _coordinator(tee, owner, tmp_path)
    request, ephemeral = _request(coordinator, tee, GOOD)
    response = coordinator.release(request)
    info = b"veil/v1/key-release" + request.challenge + claims_digest(request.evidence.claims)
    bundle = scaleout_pb2.KeyBundle.FromString(
        Suite.X25519_SHA256_AES256GCM.hpke.decrypt(response.sealed_bundle, ephemeral, info)
    )
    assert bundle.model_key == coordinator.model_key and len(bundle.epochs) >= 1
    # the bundle opens only with the replica's ephemeral key
    with pytest.raises(Exception):
        Suite.X25519_SHA256_AES256GCM.hpke.decrypt(
            response.sealed_bundle, x25519.X25519PrivateKey.generate(), info
        )
    # a challenge is single use
    with pytest.raises(AttestationError) as again:
        coordinator.release(request)
    assert again.value.reason == AttestationFailure.STALE_NONCE
    # another measurement: refused, nothing released
    bad, _ = _request(coordinator, tee, BAD)
    with pytest.raises(AttestationError) as refused:
        coordinator.release(bad)
    assert refused.value.reason == AttestationFailure.MEASUREMENT_MISMATCH
    # evidence bound to something other than the challenge: refused
    unbound, _ = _request(coordinator, tee, GOOD, bind=b"\x09" * 32)
    with pytest.raises(AttestationError):
        coordinator.release(unbound)
    decisions = [(a.admitted, a.measurement) for a in coordinator.admissions]
    assert decisions[0] == (True, GOOD.hex()) and not any(ok for ok, _ in decisions[1:])


def test_expired_challenge_is_refused(
    tee: SimulatedSnp, owner: ed25519.Ed25519PrivateKey, tmp_path: Path
) -> None:
    clock = Clock(datetime.now(UTC))
    coordinator = _coordinator(tee, owner, tmp_path, clock)
    request, _ = _request(coordinator, tee, GOOD)
    clock.now += timedelta(seconds=61)
    with pytest.raises(AttestationError) as info:
        coordinator.release(request)
    assert info.value.reason == AttestationFailure.STALE_NONCE


def test_certificate_verifies_and_every_alteration_is_refused(
    tee: SimulatedSnp, owner: ed25519.Ed25519PrivateKey, tmp_path: Path
) -> None:
    coordinator = _coordinator(tee, owner, tmp_path)
    request, ephemeral = _request(coordinator, tee, GOOD)
    info = b"veil/v1/key-release" + request.challenge + claims_digest(request.evidence.claims)
    bundle = scaleout_pb2.KeyBundle.FromString(
        Suite.X25519_SHA256_AES256GCM.hpke.decrypt(
            coordinator.release(request).sealed_bundle, ephemeral, info
        )
    )
    raw = bundle.certificate
    key, manifest = coordinator.public_key, coordinator.manifest.sha256
    policy = AttestationPolicy.simulated_for_tests(tee.root_pem, measurements=[GOOD])
    identity = verify_replica_certificate(
        raw, coordinator_key=key, manifest_sha256=manifest, policy=policy, now=datetime.now(UTC)
    )
    assert (identity.replica, identity.log_key, identity.measurement) == (
        "replica-a",
        b"\x05" * 32,
        GOOD.hex(),
    )
    assert identity.log_verifier.name == "veil-replica-a"
    cert = scaleout_pb2.ReplicaCertificate.FromString(raw)
    tampered = scaleout_pb2.ReplicaCertificate()
    tampered.CopyFrom(cert)
    tampered.statement = cert.statement.replace(b"replica-a", b"replica-b")
    with pytest.raises(AuditLogError) as bad_sig:
        verify_replica_certificate(
            tampered.SerializeToString(), coordinator_key=key, manifest_sha256=manifest
        )
    assert bad_sig.value.reason == AuditFailure.BAD_SIGNATURE
    with pytest.raises(AuditLogError):
        verify_replica_certificate(raw, coordinator_key=b"\x01" * 32, manifest_sha256=manifest)
    with pytest.raises(AuditLogError) as other_manifest:
        verify_replica_certificate(raw, coordinator_key=key, manifest_sha256=b"\x00" * 32)
    assert other_manifest.value.reason == AuditFailure.MISMATCH
    swapped = scaleout_pb2.ReplicaCertificate()
    swapped.CopyFrom(cert)
    swapped.evidence.report = b"\x00" + cert.evidence.report[1:]
    with pytest.raises(AuditLogError, match="evidence"):
        verify_replica_certificate(
            swapped.SerializeToString(), coordinator_key=key, manifest_sha256=manifest
        )
    # the client's own policy, re-applied to the replica's evidence
    strict = AttestationPolicy.simulated_for_tests(tee.root_pem, measurements=[BAD])
    with pytest.raises(AttestationError) as measured:
        verify_replica_certificate(
            raw, coordinator_key=key, manifest_sha256=manifest, policy=strict, now=T0
        )
    assert measured.value.reason == AttestationFailure.MEASUREMENT_MISMATCH


def test_epochs_overlap_so_rotation_fails_no_request() -> None:
    lifetime = timedelta(seconds=80)
    schedule = EpochSchedule(
        lifetime=lifetime,
        coordinator_key=b"\x01" * 32,
        coordinator_origin="veil-coordinator/unit",
        manifest_sha256=b"\x02" * 32,
    )
    clock = Clock(T0)
    first = schedule.live(T0)
    assert len(first) == 1
    ring = SharedKeyRing([epoch_from_proto(e) for e in first], clock)
    old = ring.current
    # a client attests now and seals to the old epoch
    clock.now = T0 + timedelta(seconds=20)  # L/4: the next epoch is made, not yet published
    both = schedule.live(clock.now)
    assert len(both) == 2
    ring.merge([epoch_from_proto(e) for e in both], clock.now)
    assert ring.current.key_id == old.key_id  # published only from L/2
    clock.now = T0 + timedelta(seconds=40)
    new = ring.current
    assert new.key_id != old.key_id
    # requests sealed to either epoch still open, until the old one expires
    assert ring.find(old.digest, clock.now) is not None
    assert ring.find(new.digest, clock.now).key_id == new.key_id
    with pytest.raises(Exception, match="unknown or rotated"):
        ring.find(old.digest, T0 + lifetime)
    # the claims name the coordinator and the manifest, the same bytes on every replica
    claims = attestation_pb2.EnclaveClaims.FromString(new.claims)
    assert claims.audit_log_key == b"\x01" * 32 and claims.manifest_sha256 == b"\x02" * 32
    with pytest.raises(Exception, match="coordinator"):
        ring.rotate(old)
    # the SDK reads the claims as a replicated deployment's
    assert EnclaveClaims.from_bytes(new.claims).manifest_sha256 == b"\x02" * 32


def test_model_and_signing_keys_are_sealed_at_rest_and_survive_a_restart(
    tee: SimulatedSnp, owner: ed25519.Ed25519PrivateKey, tmp_path: Path
) -> None:
    first = _coordinator(tee, owner, tmp_path)
    blob = (tmp_path / "model-store-key.sealed").read_bytes()
    assert first.model_key not in blob
    again = _coordinator(tee, owner, tmp_path)
    assert again.model_key == first.model_key
    assert again.public_key == first.public_key  # certificates keep verifying after a restart
    other_tee = SimulatedSnp.load_or_create(tmp_path / "other-platform")
    with pytest.raises(ConfigError, match="cannot be opened"):
        _coordinator(other_tee, owner, tmp_path)


def test_released_keys_are_the_same_on_every_replica(tee: SimulatedSnp, tmp_path: Path) -> None:
    other = SimulatedSnp.load_or_create(tmp_path / "other")
    a, b = ReleasedTee(tee, b"\x07" * 32), ReleasedTee(other, b"\x07" * 32)
    assert a.sealing_key(b"models/t") == b.sealing_key(b"models/t")
    assert a.sealing_key(b"models/t") != a.sealing_key(b"models/u")
    assert a.sealing_key(b"models/t") != tee.sealing_key(b"models/t")
    assert ReleasedTee(tee, b"\x08" * 32).sealing_key(b"models/t") != a.sealing_key(b"models/t")


def test_replica_joins_over_grpc_and_refreshes(
    tee: SimulatedSnp,
    owner: ed25519.Ed25519PrivateKey,
    tmp_path: Path,
    postgres_server: PostgresServer,
) -> None:
    coordinator = _coordinator(tee, owner, tmp_path)
    served = serve_coordinator(coordinator)
    policy_file = policy_toml(tee.root_pem, [COORD]).encode()
    settings = ReplicaSettings(
        coordinator=served.address,
        coordinator_policy=policy_for(parse_policy(policy_file)),
        coordinator_policy_sha256=hashlib.sha256(policy_file).digest(),
        database_url=postgres_server.fresh_database(),
        replica_id="a",
    )
    replica = Replica(settings)
    try:
        replica.join(tee, measurement=GOOD, log_key=b"\x05" * 32, log_origin="veil-replica-a")
        assert replica.model_key == coordinator.model_key
        assert replica.coordinator_key == coordinator.public_key
        first = replica.key_ring.current.key_id
        replica.refresh()  # a full exchange again: fresh nonce, challenge, evidence
        assert replica.key_ring.current.key_id == first
        assert [a.admitted for a in coordinator.admissions] == [True, True]
        bad = Replica(settings)
        try:
            with pytest.raises(KeyReleaseRefused, match="measurement"):
                bad.join(tee, measurement=BAD, log_key=b"\x05" * 32, log_origin="veil-replica-b")
            with pytest.raises(Exception, match="not joined"):
                _ = bad.key_ring
        finally:
            bad.close()
    finally:
        replica.close()
        served.stop()
