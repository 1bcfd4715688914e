"""Sealing: HPKE-sealed requests to a *verified* enclave, AES-256-GCM-sealed responses and chunks.

``seal_request`` takes an :class:`AttestedEnclave`, never a raw key, so data can only be sealed to
a key that hardware evidence vouched for. Every failure to open is one opaque
``DecryptionError``: no oracle says which check failed.

A failed call's detailed message is sealed too (``seal_error``/``open_error``): an ``ErrorBody``
inside a final ``SealedResponse``, sent in the trailer ``veil-sealed-error-bin``, so the clear
status says no more than a code, a reason and a fixed message.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError

from veil.sdk._wire import sealed_request_bytes
from veil.sdk.errors import DecryptionError, ProtocolError, RemoteReason
from veil.sdk.evidence import AttestedEnclave
from veil.sdk.protocol import (
    GCM_TAG_LEN,
    MODEL_KEY_LEN,
    PROTOCOL_VERSION,
    REQUEST_ID_LEN,
    RESPONSE_KEY_LEN,
    SessionKeys,
    Suite,
    chunk_aad,
    chunk_nonce,
    request_info,
    response_aad,
    session_aad,
    session_nonce,
    session_request_digest,
)
from veil.v1 import common_pb2

__all__ = [
    "CLEAR_MESSAGES",
    "MAX_ERROR_MESSAGE_BYTES",
    "SEALED_ERROR_KEY",
    "RECEIPT_VERSION",
    "OpenedResponse",
    "SealedCall",
    "bounded_message",
    "clear_message",
    "decrypt_chunk",
    "encrypt_chunk",
    "open_error",
    "open_response",
    "request_digest",
    "seal_error",
    "seal_request",
    "seal_response",
    "seal_session_request",
]

Random = Callable[[int], bytes]
GCM_NONCE_LEN = 12
RECEIPT_VERSION = 2  # the newest receipt format this SDK verifies (veil.sdk.audit.verify_receipt)
SEALED_ERROR_KEY = "veil-sealed-error-bin"  # binary trailing metadata: a serialized SealedResponse
MAX_ERROR_MESSAGE_BYTES = 1024

# The fixed clear status message for each ``veil-reason`` (docs/PROTOCOL.md, section 7): all a
# host sees of a failure after the request opened. The detail travels sealed.
CLEAR_MESSAGES: Mapping[RemoteReason, str] = MappingProxyType(
    {
        RemoteReason.UNAUTHENTICATED: "invalid API key or unknown tenant",
        RemoteReason.NOT_FOUND: "not found",
        RemoteReason.TOO_LARGE: "too large",
        RemoteReason.TIMEOUT: "timeout",
        RemoteReason.MEMORY_LIMIT: "memory limit exceeded",
        RemoteReason.OVERLOADED: "overloaded",
        RemoteReason.STORAGE_FULL: "storage full",
        RemoteReason.BUDGET_EXHAUSTED: "privacy budget exhausted",
        RemoteReason.KEY_ROTATED: "sealed to a key the enclave no longer holds: re-attest",
        RemoteReason.STALE_REQUEST: "request outside the time window",
        RemoteReason.REPLAY: "request id was already used",
        RemoteReason.SESSION_EXPIRED: "unknown or expired session: open a new one",
        RemoteReason.UNDECRYPTABLE: "sealed message could not be opened",
        RemoteReason.INVALID_INPUT: "invalid input",
        RemoteReason.MALFORMED: "malformed request",
        RemoteReason.ATTESTATION: "attestation failed",
        RemoteReason.AUDIT_UNAVAILABLE: "audit log unavailable",
        RemoteReason.INTERNAL: "internal error",
    }
)


@dataclass(frozen=True)
class SealedCall:
    """A sealed request and what the client needs to open its response."""

    request: common_pb2.SealedRequest
    method: str
    request_id: bytes
    response_key: bytes
    # What the call's receipt must name as the request (``request_digest``), computed when sealed.
    digest: str = ""
    # The session secret this one-shot request asked the enclave to open a session with (1.4).
    session_secret: bytes = b""
    # The request's wire bytes when they were built directly (``seal_session_request(...,
    # wire=True)``); ``request`` then carries every field but ``sealed``.
    wire: bytes | None = None


def seal_request(
    enclave: AttestedEnclave,
    *,
    method: str,
    tenant: str,
    api_key: str,
    payload: bytes,
    timestamp_ms: int,
    suite: Suite = Suite.X25519_SHA256_AES256GCM,
    random: Random = os.urandom,
    receipt_version: int = RECEIPT_VERSION,
    session_secret: bytes = b"",
) -> SealedCall:
    """Seal ``payload`` (a serialized request message) and the API key to the enclave.

    ``receipt_version`` tells the enclave which receipt format this client verifies (2: batched
    receipts, protocol 1.2; 1: one signature per call, what 1.0/1.1 clients get).
    ``session_secret`` (32 random bytes) also asks it to open a session (protocol 1.4).
    """
    request_id = random(REQUEST_ID_LEN)
    response_key = random(RESPONSE_KEY_LEN)
    body = common_pb2.RequestBody(
        response_key=response_key,
        api_key=api_key,
        payload=payload,
        receipt_version=receipt_version if receipt_version >= 2 else 0,
        session_secret=session_secret,
    )
    info = request_info(
        method=method,
        tenant=tenant,
        request_id=request_id,
        timestamp_ms=timestamp_ms,
        claims_digest=enclave.claims_digest,
    )
    sealed = suite.hpke.encrypt(body.SerializeToString(), enclave.public_key(suite), info)
    request = common_pb2.SealedRequest(
        version=PROTOCOL_VERSION,
        suite=int(suite),
        tenant=tenant,
        request_id=request_id,
        timestamp_ms=timestamp_ms,
        claims_digest=enclave.claims_digest,
        sealed=sealed,
    )
    return SealedCall(
        request=request,
        method=method,
        request_id=request_id,
        response_key=response_key,
        digest=hashlib.sha256(sealed).hexdigest(),
        session_secret=session_secret,
    )


def seal_session_request(
    keys: SessionKeys,
    seq: int,
    *,
    method: str,
    tenant: str,
    payload: bytes,
    timestamp_ms: int,
    claims_digest: bytes,
    random: Random = os.urandom,
    wire: bool = False,
) -> SealedCall:
    """Seal ``payload`` in an open session (protocol 1.4): AES-256-GCM only, no HPKE step.

    ``seq`` must be new in the session (1, 2, 3, ...): it is the nonce and the replay number.
    The API key and receipt format were given when the session opened. ``wire``: also build
    the request's wire bytes directly (``SealedCall.wire``; ``request`` then lacks ``sealed``),
    saving two copies of the payload.
    """
    request_id = random(REQUEST_ID_LEN)
    aad = session_aad(
        method=method,
        tenant=tenant,
        request_id=request_id,
        timestamp_ms=timestamp_ms,
        claims_digest=claims_digest,
        session_id=keys.session_id,
        seq=seq,
    )
    sealed = AESGCM(keys.request_key).encrypt(session_nonce(keys.request_iv, seq), payload, aad)
    request = common_pb2.SealedRequest(
        version=PROTOCOL_VERSION,
        suite=int(Suite.X25519_SHA256_AES256GCM),
        tenant=tenant,
        request_id=request_id,
        timestamp_ms=timestamp_ms,
        claims_digest=claims_digest,
        session_id=keys.session_id,
        seq=seq,
    )
    if wire:
        encoded: bytes | None = sealed_request_bytes(request, sealed)
    else:
        encoded = None
        request.sealed = sealed
    return SealedCall(
        request=request,
        method=method,
        request_id=request_id,
        response_key=keys.response_key,
        digest=session_request_digest(keys.session_id, seq, sealed[-GCM_TAG_LEN:]),
        wire=encoded,
    )


@dataclass(frozen=True)
class OpenedResponse:
    """A response that opened: the method's payload and the audit log's receipt for the call."""

    payload: bytes
    receipt: str
    final: bool = True
    replica: bytes = b""  # replicated deployments: the answering replica's certificate (1.3)
    session_idle_seconds: int = 0  # 1.4: the session the request asked for is open (0: none)


def seal_response(
    response_key: bytes,
    *,
    method: str,
    request_id: bytes,
    payload: bytes,
    receipt: str = "",
    seq: int = 0,
    final: bool = True,
    random: Random = os.urandom,
    replica: bytes = b"",
    session_idle_seconds: int = 0,
) -> common_pb2.SealedResponse:
    """Seal a serialized response message (and its receipt) under the client's response key.

    Streams seal message ``seq`` (0, 1, …) with ``final`` set on the last one only. A replica
    of a replicated deployment sends its certificate (``replica``) with each receipt.
    ``session_idle_seconds`` > 0 tells the client the session it asked for is open (1.4).
    """
    body = common_pb2.ResponseBody(
        payload=payload,
        receipt=receipt,
        replica=replica,
        session_idle_seconds=session_idle_seconds,
    )
    return _seal_body(response_key, method, request_id, body, seq, final, random)


def clear_message(reason: str) -> str:
    """The fixed clear message for ``reason`` ("error" for a reason this version does not know)."""
    return CLEAR_MESSAGES.get(RemoteReason.parse(reason), "error")


def bounded_message(message: str, limit: int = MAX_ERROR_MESSAGE_BYTES) -> str:
    """``message`` on one line, cut to at most ``limit`` bytes of UTF-8 (ending in "…" if cut)."""
    line = " ".join(message.split())
    raw = line.encode()
    if len(raw) <= limit:
        return line
    return raw[: limit - len("…".encode())].decode(errors="ignore") + "…"


def seal_error(
    response_key: bytes,
    *,
    method: str,
    request_id: bytes,
    code: str,
    reason: str,
    message: str,
    seq: int = 0,
    random: Random = os.urandom,
) -> common_pb2.SealedResponse:
    """Seal why a call failed, exactly like a final response at position ``seq``.

    ``seq`` is the number of messages already sent on the call (0 for unary calls); the message
    is cut to ``MAX_ERROR_MESSAGE_BYTES``.
    """
    error = common_pb2.ErrorBody(code=code, reason=reason, message=bounded_message(message))
    body = common_pb2.ResponseBody(error=error)
    return _seal_body(response_key, method, request_id, body, seq, True, random)


def _seal_body(
    response_key: bytes,
    method: str,
    request_id: bytes,
    body: common_pb2.ResponseBody,
    seq: int,
    final: bool,
    random: Random,
) -> common_pb2.SealedResponse:
    nonce = random(GCM_NONCE_LEN)
    aad = response_aad(method=method, request_id=request_id, seq=seq, final=final)
    ciphertext = AESGCM(response_key).encrypt(nonce, body.SerializeToString(), aad)
    return common_pb2.SealedResponse(
        request_id=request_id, nonce=nonce, ciphertext=ciphertext, seq=seq, final=final
    )


def _open_body(
    call: SealedCall, response: common_pb2.SealedResponse, seq: int
) -> common_pb2.ResponseBody:
    if (
        response.request_id != call.request_id
        or len(response.nonce) != GCM_NONCE_LEN
        or response.seq != seq
    ):
        raise DecryptionError("sealed response could not be opened")
    try:
        aad = response_aad(
            method=call.method, request_id=call.request_id, seq=seq, final=response.final
        )
        plaintext = AESGCM(call.response_key).decrypt(response.nonce, response.ciphertext, aad)
        return common_pb2.ResponseBody.FromString(plaintext)
    except (InvalidTag, DecodeError) as exc:
        raise DecryptionError("sealed response could not be opened") from exc


def open_response(
    call: SealedCall, response: common_pb2.SealedResponse, *, seq: int = 0
) -> OpenedResponse:
    """Open the enclave's sealed response to ``call``; raise ``DecryptionError`` on any defect.

    ``seq`` is the position the client expects (0 for unary calls); whether the message is the
    final one is authenticated and reported in ``OpenedResponse.final``.
    """
    body = _open_body(call, response, seq)
    if body.HasField("error"):
        raise ProtocolError("enclave sent a sealed error where a response was expected")
    return OpenedResponse(
        payload=bytes(body.payload),
        receipt=body.receipt,
        final=response.final,
        replica=bytes(body.replica),
        session_idle_seconds=body.session_idle_seconds,
    )


def open_error(call: SealedCall, sealed: bytes, *, seq: int = 0) -> common_pb2.ErrorBody:
    """Open the sealed error (trailer ``veil-sealed-error-bin``) of ``call`` at position ``seq``.

    It must open under the call's response key with the same AAD as a final response at ``seq``,
    so an error replayed from another call, or moved within a stream, does not open. Any defect
    is one ``DecryptionError``.
    """
    try:
        response = common_pb2.SealedResponse.FromString(sealed)
    except DecodeError as exc:
        raise DecryptionError("sealed error could not be opened") from exc
    body = _open_body(call, response, seq)
    if not response.final or not body.HasField("error"):
        raise DecryptionError("sealed error could not be opened")
    error = body.error
    if len(error.message.encode()) > MAX_ERROR_MESSAGE_BYTES:
        raise DecryptionError("sealed error could not be opened")
    return error


def encrypt_chunk(
    model_key: bytes, *, request_id: bytes, seq: int, final: bool, data: bytes
) -> bytes:
    """Encrypt one upload chunk; its AAD carries the sequence number and the final flag."""
    if len(model_key) != MODEL_KEY_LEN:
        raise ProtocolError(f"model key must be {MODEL_KEY_LEN} bytes, not {len(model_key)}")
    return AESGCM(model_key).encrypt(
        chunk_nonce(seq), data, chunk_aad(request_id=request_id, seq=seq, final=final)
    )


def decrypt_chunk(
    model_key: bytes, *, request_id: bytes, seq: int, final: bool, ciphertext: bytes
) -> bytes:
    """Decrypt one upload chunk; a moved, truncated or spliced chunk fails to open."""
    try:
        return AESGCM(model_key).decrypt(
            chunk_nonce(seq), ciphertext, chunk_aad(request_id=request_id, seq=seq, final=final)
        )
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError("model chunk could not be opened") from exc


def request_digest(request: common_pb2.SealedRequest) -> str:
    """What a receipt names as the request: SHA-256 of the sealed bytes (enc ‖ ciphertext);
    in a session (1.4), ``session_request_digest`` of its id, sequence number and GCM tag."""
    sealed = request.sealed
    if request.session_id:
        return session_request_digest(request.session_id, request.seq, sealed[-GCM_TAG_LEN:])
    return hashlib.sha256(sealed).hexdigest()
