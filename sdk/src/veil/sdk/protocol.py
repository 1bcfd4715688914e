"""Byte-level building blocks of Veil's wire protocol, version 1 (see docs/PROTOCOL.md).

Pure functions only: the client and the enclave build exactly the same bytes from them.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.sdk.errors import ProtocolError

__all__ = [
    "GCM_TAG_LEN",
    "MAX_SESSION_SEQ",
    "PROTOCOL_VERSION",
    "REQUEST_ID_LEN",
    "RESPONSE_KEY_LEN",
    "SESSION_ID_LEN",
    "SESSION_SECRET_LEN",
    "Method",
    "SessionKeys",
    "Suite",
    "chunk_aad",
    "chunk_nonce",
    "claims_digest",
    "decode_public_key",
    "encode_hybrid",
    "report_data_for",
    "request_info",
    "response_aad",
    "session_aad",
    "session_keys",
    "session_nonce",
    "session_request_digest",
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
LABEL_SESSION = b"veil/v1/session"
LABEL_SESSION_REQUEST = b"veil/v1/session-request"
LABEL_SESSION_DIGEST = b"veil/v1/session-request-digest"

# Sessions (protocol 1.4): a 32-byte secret sealed once with HPKE keys every later request.
SESSION_SECRET_LEN = 32
SESSION_ID_LEN = 16
GCM_TAG_LEN = 16
# Requests per session: their nonces come from the sequence number (never reused), the
# responses' nonces are random, so a session stays within 2^32 messages per key.
MAX_SESSION_SEQ = 2**32 - 1


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


@dataclass(frozen=True)
class SessionKeys:
    """What both ends derive from a session secret (protocol 1.4, docs/PROTOCOL.md 4.5)."""

    session_id: bytes  # 16 bytes, sent in clear with each request of the session
    request_key: bytes  # AES-256-GCM, client to enclave; nonce = request_iv XOR seq
    request_iv: bytes  # 12 bytes
    response_key: bytes  # AES-256-GCM, enclave to client; random nonces, as one-shot responses

    def __repr__(self) -> str:  # never print keys
        return f"SessionKeys(session_id={self.session_id.hex()})"


def session_keys(secret: bytes, *, tenant: str, claims_digest: bytes) -> SessionKeys:
    """HKDF-SHA256(salt = claims digest, info = label ‖ tenant) of the session secret.

    The secret reaches the enclave only inside an HPKE-sealed request to the attested key, so
    only the client and that enclave can derive these; binding the claims digest and tenant
    makes a session useless under any other attestation or tenant.
    """
    if len(secret) != SESSION_SECRET_LEN:
        raise ProtocolError(f"session secret must be {SESSION_SECRET_LEN} bytes")
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=SESSION_ID_LEN + 32 + 12 + 32,
        salt=claims_digest,
        info=_lp(LABEL_SESSION) + _lp(tenant.encode()),
    ).derive(secret)
    return SessionKeys(
        session_id=okm[:16], request_key=okm[16:48], request_iv=okm[48:60], response_key=okm[60:]
    )


def session_nonce(iv: bytes, seq: int) -> bytes:
    """A session request's AES-GCM nonce: the request IV XOR the 96-bit big-endian ``seq``."""
    return (int.from_bytes(iv, "big") ^ seq).to_bytes(12, "big")


def session_aad(
    *,
    method: str,
    tenant: str,
    request_id: bytes,
    timestamp_ms: int,
    claims_digest: bytes,
    session_id: bytes,
    seq: int,
) -> bytes:
    """AES-GCM AAD of a session request: every clear field of the envelope, as ``request_info``."""
    return b"".join(
        (
            _lp(LABEL_SESSION_REQUEST),
            _lp(method.encode()),
            _lp(tenant.encode()),
            _lp(request_id),
            _lp(struct.pack(">q", timestamp_ms)),
            _lp(claims_digest),
            _lp(session_id),
            struct.pack(">Q", seq),
        )
    )


def session_request_digest(session_id: bytes, seq: int, tag: bytes) -> str:
    """How receipts name a session request: SHA-256(label ‖ session id ‖ seq ‖ GCM tag), hex.

    The enclave accepts each (session, seq) once, so this names exactly one processed request
    without hashing its payload again; what the request carried is committed by the record's
    own digests (docs/PROTOCOL.md 4.5 says why the tag alone would not do).
    """
    return hashlib.sha256(
        _lp(LABEL_SESSION_DIGEST) + _lp(session_id) + struct.pack(">Q", seq) + _lp(tag)
    ).hexdigest()
