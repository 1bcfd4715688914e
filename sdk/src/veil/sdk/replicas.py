"""Replicated deployments: the signed manifest and the certificates naming each replica.

A deployment of several enclave replicas (docs/SCALE-OUT.md) is governed by a *manifest*: the
deployment's name, the attestation policy every replica must satisfy (the policy-file format of
``veil policy``, as TOML text) and the key epoch schedule, in canonical JSON, signed by the
deployment owner's Ed25519 key over ``MANIFEST_CONTEXT ‖ manifest``.

An attested coordinator holds it and releases the shared keys only to replicas whose evidence
satisfies it; for each admitted replica it signs a *replica certificate* (canonical JSON over
``CERTIFICATE_CONTEXT ‖ statement``) naming the replica's audit log key. Each receipt a replica
sends comes with its certificate, so a client verifies the receipt under the log key of the
replica that answered, and may re-verify that replica's own evidence (carried in the
certificate) under its own policy. Everything here fails closed with a typed ``VeilError``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import DecodeError

from veil.sdk.attestation._policy import AttestationPolicy
from veil.sdk.attestation._policy_file import PolicyFile, parse_policy
from veil.sdk.audit._note import Verifier
from veil.sdk.errors import (
    AttestationError,
    AttestationFailure,
    AuditFailure,
    AuditLogError,
    ConfigError,
)
from veil.sdk.evidence import AttestedEnclave, Evidence, from_ms, to_ms, verify_enclave
from veil.sdk.protocol import NONCE_LEN
from veil.v1 import scaleout_pb2

__all__ = [
    "CERTIFICATE_CONTEXT",
    "MANIFEST_CONTEXT",
    "AttestedCoordinator",
    "Manifest",
    "ReplicaIdentity",
    "canonical_json",
    "certificate_statement",
    "policy_for",
    "sign_manifest",
    "attest_coordinator",
    "verify_coordinator",
    "verify_manifest",
    "verify_replica_certificate",
]

MANIFEST_CONTEXT = b"veil-manifest/v1\n"
CERTIFICATE_CONTEXT = b"veil-replica-certificate/v1\n"
MANIFEST_VERSION = 1
_MANIFEST_KEYS = frozenset({"version", "deployment", "policy", "epoch_seconds"})
_STATEMENT_KEYS = frozenset(
    {
        "version",
        "replica",
        "tee",
        "measurement",
        "log_origin",
        "log_key",
        "manifest_sha256",
        "challenge",
        "evidence_sha256",
        "issued_at_ms",
    }
)


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the one byte form that is signed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _parse_canonical(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} is not JSON") from exc
    if not isinstance(doc, dict) or canonical_json(doc) != raw:
        raise ConfigError(f"{what} is not canonical JSON")
    return doc


def policy_for(policy: PolicyFile) -> AttestationPolicy:
    """The ``verify_enclave`` policy of a policy file: its SEV-SNP part, with its TDX part."""
    base = policy.snp if policy.allows("sev-snp") else None
    tdx = policy.tdx if policy.allows("tdx") else None
    if base is None:
        if tdx is None:
            raise ConfigError(f"{policy.source}: allows neither sev-snp nor tdx enclaves")
        # A TDX-only policy: an SNP report can never verify (no root is an AMD key).
        raise ConfigError(f"{policy.source}: a replica policy must allow sev-snp (TDX-only: open)")
    return replace(base, tdx=tdx)


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: deployment name, replica policy, key epoch lifetime."""

    raw: bytes
    deployment: str
    policy_toml: str
    policy: PolicyFile
    epoch_seconds: int

    @property
    def sha256(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    @property
    def attestation_policy(self) -> AttestationPolicy:
        return policy_for(self.policy)

    @staticmethod
    def build(*, deployment: str, policy_toml: str, epoch_seconds: int) -> bytes:
        """The canonical bytes of a manifest (validated by parsing them back)."""
        raw = canonical_json(
            {
                "version": MANIFEST_VERSION,
                "deployment": deployment,
                "policy": policy_toml,
                "epoch_seconds": epoch_seconds,
            }
        )
        Manifest.parse(raw)
        return raw

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        doc = _parse_canonical(raw, "manifest")
        if set(doc) != _MANIFEST_KEYS or doc["version"] != MANIFEST_VERSION:
            raise ConfigError(f"manifest must have exactly the keys {sorted(_MANIFEST_KEYS)}")
        name, toml, seconds = doc["deployment"], doc["policy"], doc["epoch_seconds"]
        if not isinstance(name, str) or not name or "/" in name or "\n" in name:
            raise ConfigError("manifest deployment must be a non-empty name without / or newline")
        if not isinstance(toml, str):
            raise ConfigError("manifest policy must be policy-file TOML text")
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not seconds >= 10:
            raise ConfigError("manifest epoch_seconds must be an integer >= 10")
        policy = parse_policy(toml.encode(), source="manifest policy")
        policy_for(policy)
        return cls(raw, name, toml, policy, seconds)


def sign_manifest(raw: bytes, key: ed25519.Ed25519PrivateKey) -> bytes:
    """The owner's 64-byte signature over ``MANIFEST_CONTEXT ‖ raw``."""
    Manifest.parse(raw)
    return key.sign(MANIFEST_CONTEXT + raw)


def verify_manifest(raw: bytes, signature: bytes, owner: ed25519.Ed25519PublicKey) -> Manifest:
    """Check the owner's signature before parsing a byte; raise ``AttestationError(POLICY)``."""
    try:
        owner.verify(signature, MANIFEST_CONTEXT + raw)
    except InvalidSignature as exc:
        raise AttestationError(
            AttestationFailure.POLICY, "manifest signature does not verify under the owner key"
        ) from exc
    return Manifest.parse(raw)


def certificate_statement(
    *,
    replica: str,
    tee: str,
    measurement: str,
    log_origin: str,
    log_key: bytes,
    manifest_sha256: bytes,
    challenge: bytes,
    evidence_sha256: bytes,
    issued_at: datetime,
) -> bytes:
    """The canonical statement a coordinator signs for an admitted replica."""
    return canonical_json(
        {
            "version": 1,
            "replica": replica,
            "tee": tee,
            "measurement": measurement,
            "log_origin": log_origin,
            "log_key": base64.b64encode(log_key).decode(),
            "manifest_sha256": manifest_sha256.hex(),
            "challenge": challenge.hex(),
            "evidence_sha256": evidence_sha256.hex(),
            "issued_at_ms": to_ms(issued_at),
        }
    )


@dataclass(frozen=True)
class ReplicaIdentity:
    """A replica as its coordinator certified it: who answered, and which key signs its log."""

    replica: str
    tee: str
    measurement: str
    log_origin: str
    log_key: bytes
    manifest_sha256: bytes
    challenge: bytes
    evidence_sha256: bytes
    issued_at: datetime
    evidence: Evidence
    certificate: bytes  # the serialized ReplicaCertificate, as received (saved in exports)

    @functools.cached_property
    def log_verifier(self) -> Verifier:
        """The replica's log key, built once (each receipt it answers is checked with it)."""
        try:
            return Verifier.from_public_key(self.log_origin, self.log_key)
        except AuditLogError as exc:
            raise AttestationError(
                AttestationFailure.MALFORMED, f"replica certificate names a bad log key: {exc}"
            ) from exc


def _bad(message: str) -> AuditLogError:
    return AuditLogError(f"replica certificate refused: {message}", reason=AuditFailure.MISMATCH)


def verify_replica_certificate(
    raw: bytes,
    *,
    coordinator_key: bytes,
    manifest_sha256: bytes,
    policy: AttestationPolicy | None = None,
    now: datetime | None = None,
) -> ReplicaIdentity:
    """Verify a serialized ``ReplicaCertificate`` under the attested coordinator key.

    With ``policy`` (and ``now``), also re-verify the replica's own evidence carried in the
    certificate: its hardware report answering the coordinator's challenge, its measurement
    under the caller's policy, and its claims naming the same log key.
    """
    msg = scaleout_pb2.ReplicaCertificate()
    try:
        msg.ParseFromString(raw)
    except DecodeError as exc:
        raise AuditLogError("replica certificate is malformed") from exc
    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(coordinator_key)
        key.verify(msg.signature, CERTIFICATE_CONTEXT + msg.statement)
    except (ValueError, InvalidSignature) as exc:
        raise AuditLogError(
            "replica certificate is not signed by the attested coordinator",
            reason=AuditFailure.BAD_SIGNATURE,
        ) from exc
    try:
        doc = _parse_canonical(bytes(msg.statement), "replica certificate")
        if set(doc) != _STATEMENT_KEYS or doc["version"] != 1:
            raise ConfigError("unknown keys")
        evidence = Evidence.from_proto(msg.evidence)
        identity = ReplicaIdentity(
            replica=str(doc["replica"]),
            tee=str(doc["tee"]),
            measurement=str(doc["measurement"]),
            log_origin=str(doc["log_origin"]),
            log_key=base64.b64decode(doc["log_key"], validate=True),
            manifest_sha256=bytes.fromhex(doc["manifest_sha256"]),
            challenge=bytes.fromhex(doc["challenge"]),
            evidence_sha256=bytes.fromhex(doc["evidence_sha256"]),
            issued_at=from_ms(int(doc["issued_at_ms"])),
            evidence=evidence,
            certificate=bytes(raw),
        )
    except (ConfigError, TypeError, ValueError, binascii.Error) as exc:
        raise AuditLogError(f"replica certificate is malformed: {exc}") from exc
    if not hmac.compare_digest(identity.manifest_sha256, manifest_sha256):
        raise _bad("it was issued under another manifest")
    evidence_digest = hashlib.sha256(msg.evidence.SerializeToString(deterministic=True)).digest()
    if not hmac.compare_digest(evidence_digest, identity.evidence_sha256):
        raise _bad("the evidence it carries is not the evidence it names")
    if policy is not None:
        if now is None:
            raise ConfigError("verifying a replica's evidence needs the current time")
        attested = verify_enclave(
            evidence,
            nonce=identity.challenge,
            policy=policy,
            now=now,
            challenge_issued_at=identity.issued_at,
            require_unexpired=False,
        )
        if attested.measurement != identity.measurement or attested.tee != identity.tee:
            raise _bad("its evidence reports another measurement")
        if (
            attested.claims.audit_log_key != identity.log_key
            or attested.claims.audit_log_origin != identity.log_origin
        ):
            raise _bad("its evidence binds another audit log key")
    return identity


@dataclass(frozen=True)
class AttestedCoordinator:
    """A coordinator whose evidence verified and whose manifest its owner signed."""

    public_key: bytes  # the Ed25519 key that certifies replicas (the claims' audit_log_key)
    manifest: Manifest
    measurement: str

    def vouches_for(self, enclave: AttestedEnclave) -> bool:
        """Whether ``enclave`` (an attested replica) publishes this coordinator's claims."""
        return hmac.compare_digest(
            enclave.claims.audit_log_key, self.public_key
        ) and hmac.compare_digest(enclave.claims.manifest_sha256, self.manifest.sha256)


def verify_coordinator(
    response: scaleout_pb2.ChallengeResponse,
    *,
    nonce: bytes,
    policy: AttestationPolicy,
    owner: ed25519.Ed25519PublicKey,
    now: datetime,
) -> AttestedCoordinator:
    """Verify a coordinator's answer to ``nonce``: its evidence under ``policy``, its manifest
    under the owner's key, and that its claims bind that manifest."""
    attested = verify_enclave(
        Evidence.from_proto(response.coordinator), nonce=nonce, policy=policy, now=now
    )
    manifest = verify_manifest(bytes(response.manifest), bytes(response.manifest_signature), owner)
    if not hmac.compare_digest(attested.claims.manifest_sha256, manifest.sha256):
        raise AttestationError(
            AttestationFailure.UNBOUND_KEY, "the coordinator's evidence binds another manifest"
        )
    if len(attested.claims.audit_log_key) != 32:
        raise AttestationError(AttestationFailure.MALFORMED, "the coordinator names no key")
    return AttestedCoordinator(attested.claims.audit_log_key, manifest, attested.measurement)


def attest_coordinator(
    target: str,
    *,
    policy: AttestationPolicy,
    owner: ed25519.Ed25519PublicKey,
    now: datetime,
    random: Callable[[int], bytes] = os.urandom,
    timeout: float = 20.0,
) -> AttestedCoordinator:
    """Ask the coordinator at ``target`` (host:port) for its evidence and verify it."""
    import grpc

    from veil.v1 import scaleout_pb2_grpc

    nonce = random(NONCE_LEN)
    with grpc.insecure_channel(target) as channel:
        try:
            response = scaleout_pb2_grpc.KeyReleaseServiceStub(channel).Challenge(
                scaleout_pb2.ChallengeRequest(nonce=nonce), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise AttestationError(
                AttestationFailure.UNSUPPORTED, f"coordinator unreachable: {exc.code().name}"
            ) from exc
    return verify_coordinator(response, nonce=nonce, policy=policy, owner=owner, now=now)
