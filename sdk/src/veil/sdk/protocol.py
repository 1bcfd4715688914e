"""Byte-level building blocks of Veil's wire protocol, version 1 (see docs/PROTOCOL.md).

Pure functions only: the client and the enclave build exactly the same bytes from them.
"""

from __future__ import annotations

import enum
import hashlib
import struct

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from veil.sdk.errors import ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "REQUEST_ID_LEN",
    "RESPONSE_KEY_LEN",
    "Method",
    "Suite",
    "chunk_aad",
    "chunk_nonce",
    "claims_digest",
    "decode_public_key",
    "encode_hybrid",
    "report_data_for",
    "request_info",
    "response_aad",
]

PROTOCOL_VERSION = 1
REQUEST_ID_LEN = 16
RESPONSE_KEY_LEN = 32
MODEL_KEY_LEN = 32
NONCE_LEN = 32
MLKEM768_PUBLIC_LEN = 1184
X25519_PUBLIC_LEN = 32

LABEL_REQUEST = b"veil/v1/request"
LABEL_RESPONSE = b"veil/v1/response"
LABEL_CHUNK = b"veil/v1/chunk"


class Suite(enum.IntEnum):
    """HPKE suites Veil seals requests with; numbers match ``veil.v1.SealingSuite``."""

    X25519_SHA256_AES256GCM = 1
    MLKEM768X25519_SHA256_AES256GCM = 2

    @property
    def hpke(self) -> hpke.Suite:
        kem = hpke.KEM.X25519 if self is Suite.X25519_SHA256_AES256GCM else hpke.KEM.MLKEM768_X25519
        return hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


class Method(enum.StrEnum):
    """Full gRPC method names; each is bound into the sealing context."""

    INFER = "/veil.v1.InferenceService/Infer"
    UPLOAD_MODEL = "/veil.v1.ModelService/UploadModel"
    LIST_MODELS = "/veil.v1.ModelService/ListModels"
    DELETE_MODEL = "/veil.v1.ModelService/DeleteModel"
    AUDIT_CHECKPOINT = "/veil.v1.AuditService/GetCheckpoint"
    AUDIT_INCLUSION = "/veil.v1.AuditService/GetInclusionProof"
    AUDIT_CONSISTENCY = "/veil.v1.AuditService/GetConsistencyProof"
    AUDIT_EXPORT = "/veil.v1.AuditService/ExportAudit"
    AUDIT_EXPORT_STREAM = "/veil.v1.AuditService/ExportAuditStream"
    UPLOAD_DATASET = "/veil.v1.TrainingService/UploadDataset"
    TRAIN = "/veil.v1.TrainingService/Train"
    GET_BUDGET = "/veil.v1.TrainingService/GetBudget"
    EMBED_WATERMARK = "/veil.v1.WatermarkService/EmbedWatermark"
    VERIFY_WATERMARK = "/veil.v1.WatermarkService/VerifyWatermark"


PublicKey = x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey


def _lp(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ProtocolError("a bound field is longer than 65535 bytes")
    return struct.pack(">H", len(data)) + data


def request_info(
    *, method: str, tenant: str, request_id: bytes, timestamp_ms: int, claims_digest: bytes
) -> bytes:
    """HPKE ``info`` for a sealed request: binds version, method, tenant, id, time, attestation."""
    return b"".join(
        (
            _lp(LABEL_REQUEST),
            _lp(method.encode()),
            _lp(tenant.encode()),
            _lp(request_id),
            _lp(struct.pack(">q", timestamp_ms)),
            _lp(claims_digest),
        )
    )


def response_aad(*, method: str, request_id: bytes, seq: int = 0, final: bool = True) -> bytes:
    """AES-GCM AAD of a sealed response: binds it to its request and its place in the stream.

    A unary response is message 0 and final; a streamed one carries its sequence number and
    whether it is the last, so messages can be neither reordered, dropped nor cut off unseen.
    """
    return (
        _lp(LABEL_RESPONSE)
        + _lp(method.encode())
        + _lp(request_id)
        + struct.pack(">QB", seq, 1 if final else 0)
    )


def chunk_nonce(seq: int) -> bytes:
    """A model chunk's AES-GCM nonce: 4 zero bytes then the sequence number, big-endian."""
    return b"\0\0\0\0" + struct.pack(">Q", seq)


def chunk_aad(*, request_id: bytes, seq: int, final: bool) -> bytes:
    """A model chunk's AAD: detects truncation, reordering and splicing between uploads."""
    return _lp(LABEL_CHUNK) + _lp(request_id) + struct.pack(">QB", seq, 1 if final else 0)


def report_data_for(nonce: bytes, commitment: bytes) -> bytes:
    """REPORT_DATA that binds a key commitment to a client nonce: SHA-512(nonce ‖ commitment)."""
    return hashlib.sha512(nonce + commitment).digest()


def claims_digest(claims: bytes) -> bytes:
    """The commitment to an enclave's claims (its keys): SHA-256 over the exact claim bytes."""
    return hashlib.sha256(claims).digest()


def encode_hybrid(mlkem_pub: mlkem.MLKEM768PublicKey, x_pub: x25519.X25519PublicKey) -> bytes:
    """Raw ML-KEM-768+X25519 public key: encapsulation key (1184 bytes) ‖ X25519 key (32)."""
    return mlkem_pub.public_bytes_raw() + x_pub.public_bytes_raw()


def decode_public_key(suite: Suite, raw: bytes) -> PublicKey:
    """Parse a suite's public key from its raw bytes; raise ``ProtocolError`` if malformed."""
    try:
        if suite is Suite.X25519_SHA256_AES256GCM:
            if len(raw) != X25519_PUBLIC_LEN:
                raise ProtocolError(f"X25519 key is {len(raw)} bytes, expected 32")
            return x25519.X25519PublicKey.from_public_bytes(raw)
        if len(raw) != MLKEM768_PUBLIC_LEN + X25519_PUBLIC_LEN:
            raise ProtocolError(f"ML-KEM-768+X25519 key is {len(raw)} bytes, expected 1216")
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC_LEN]),
            x25519.X25519PublicKey.from_public_bytes(raw[MLKEM768_PUBLIC_LEN:]),
        )
    except ValueError as exc:
        raise ProtocolError(f"malformed {suite.name} public key: {exc}") from exc
