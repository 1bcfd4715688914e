"""Opening sealed requests and sealing responses: the only door into the enclave's logic."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidTag
from google.protobuf.message import DecodeError

from veil.enclave._config import Tenant
from veil.enclave._errors import AuthError
from veil.enclave._keys import KeyRing
from veil.enclave._limits import Limits
from veil.enclave._replay import ReplayStore, check_fresh
from veil.enclave._sessions import SessionTable
from veil.enclave._telemetry import stage
from veil.sdk.errors import DecryptionError, ProtocolError
from veil.sdk.evidence import to_ms
from veil.sdk.protocol import (
    GCM_TAG_LEN,
    PROTOCOL_VERSION,
    REQUEST_ID_LEN,
    RESPONSE_KEY_LEN,
    SESSION_ID_LEN,
    SESSION_SECRET_LEN,
    Suite,
    request_info,
    session_aad,
    session_nonce,
    session_request_digest,
)
from veil.sdk.sealing import seal_response
from veil.v1 import common_pb2

__all__ = ["Gateway", "OpenedRequest"]


# A sealed request at least this large has its SHA-256 (what receipts name it by) computed on a
# helper thread while this one opens it: hashlib releases the GIL, AES-GCM and parsing do not.
PARALLEL_DIGEST_BYTES = 256 * 1024
_DIGESTS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="veil-digest")


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class OpenedRequest:
    """A request that decrypted, is fresh, was never seen before, and whose API key is valid."""

    method: str
    tenant: str
    request_id: bytes
    response_key: bytes = b""
    payload: bytes = b""
    key_id: str = ""
    digest: str | Future[str] = ""  # SHA-256 of the sealed bytes (maybe still being computed)
    receipt_version: int = 1  # the receipt format the client asked for (1 or 2)
    session_idle_seconds: int = 0  # 1.4: the request opened a session (told to the client)

    def __repr__(self) -> str:  # never print keys or payloads
        return f"OpenedRequest(method={self.method!r}, tenant={self.tenant!r})"

    @property
    def request_digest(self) -> str:
        """SHA-256 (hex) of the sealed bytes, as receipts and records name the request."""
        digest = self.digest
        return digest if isinstance(digest, str) else digest.result()


class Gateway:
    def __init__(
        self,
        *,
        keys: KeyRing,
        replay: ReplayStore,
        tenants: Mapping[str, Tenant],
        clock: Callable[[], datetime],
        random: Callable[[int], bytes] = os.urandom,
        sessions: SessionTable | None = None,
    ) -> None:
        self._keys = keys
        self._replay = replay
        self._tenants = tenants
        self._clock = clock
        self._random = random
        if sessions is None:  # an empty table is falsy: no `or`
            defaults = Limits()
            sessions = SessionTable(
                max_sessions=defaults.max_sessions, idle_seconds=defaults.session_idle_seconds
            )
        self.sessions = sessions
        # A replica's certificate from its coordinator, sent with each receipt (protocol 1.3).
        self.replica_certificate = b""

    def open(self, request: common_pb2.SealedRequest, method: str) -> OpenedRequest:
        """Decrypt and authenticate; raise a ``VeilError`` subclass naming what was wrong."""
        if request.version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {request.version} is not supported (expected {PROTOCOL_VERSION})"
            )
        try:
            suite = Suite(request.suite)
        except ValueError as exc:
            raise ProtocolError(f"sealing suite {request.suite} is not supported") from exc
        if len(request.request_id) != REQUEST_ID_LEN:
            raise ProtocolError(f"request_id must be {REQUEST_ID_LEN} bytes")
        if request.session_id:
            return self._open_in_session(request, method)
        now = self._clock()
        epoch = self._keys.find(request.claims_digest, now)
        info = request_info(
            method=method,
            tenant=request.tenant,
            request_id=request.request_id,
            timestamp_ms=request.timestamp_ms,
            claims_digest=request.claims_digest,
        )
        sealed = request.sealed  # each read of a bytes field copies it: read once
        digest: str | Future[str]
        if len(sealed) >= PARALLEL_DIGEST_BYTES:
            digest = _DIGESTS.submit(_sha256_hex, sealed)
        else:
            digest = _sha256_hex(sealed)
        try:
            plaintext = suite.hpke.decrypt(sealed, epoch.private_keys[suite], info)
        except Exception as exc:  # any HPKE failure is one opaque error
            raise DecryptionError("sealed request could not be opened") from exc
        del sealed
        body = common_pb2.RequestBody()
        try:
            body.ParseFromString(plaintext)
        except DecodeError as exc:
            raise ProtocolError("sealed request body is malformed") from exc
        if len(body.response_key) != RESPONSE_KEY_LEN:
            raise ProtocolError(f"response key must be {RESPONSE_KEY_LEN} bytes")
        self._replay.check(request.request_id, request.timestamp_ms, to_ms(now))
        tenant = self._tenants.get(request.tenant)
        if tenant is None or not tenant.accepts(body.api_key):
            raise AuthError(f"invalid API key for tenant {request.tenant!r}")
        receipt_version = 2 if body.receipt_version >= 2 else 1
        idle = 0
        if body.session_secret:
            if len(body.session_secret) != SESSION_SECRET_LEN:
                raise ProtocolError(f"session secret must be {SESSION_SECRET_LEN} bytes")
            self.sessions.open(
                body.session_secret,
                tenant=request.tenant,
                key_id=tenant.key_id,
                claims_digest=request.claims_digest,
                receipt_version=receipt_version,
            )
            idle = self.sessions.idle_seconds
        return OpenedRequest(
            method=method,
            tenant=request.tenant,
            request_id=bytes(request.request_id),
            response_key=bytes(body.response_key),
            payload=body.payload,
            key_id=tenant.key_id,
            digest=digest,
            receipt_version=receipt_version,
            session_idle_seconds=idle,
        )

    def _open_in_session(self, request: common_pb2.SealedRequest, method: str) -> OpenedRequest:
        """A request sealed in a session (protocol 1.4): AES-GCM under the session's key."""
        session_id = request.session_id
        if len(session_id) != SESSION_ID_LEN:
            raise ProtocolError(f"session_id must be {SESSION_ID_LEN} bytes")
        now = self._clock()
        # The attestation the session was opened under must still be the enclave's.
        self._keys.find(request.claims_digest, now)
        seq = request.seq
        session = self.sessions.find(
            session_id, tenant=request.tenant, claims_digest=request.claims_digest, seq=seq
        )
        check_fresh(request.timestamp_ms, to_ms(now), self._replay.window_ms)
        aad = session_aad(
            method=method,
            tenant=request.tenant,
            request_id=request.request_id,
            timestamp_ms=request.timestamp_ms,
            claims_digest=request.claims_digest,
            session_id=session_id,
            seq=seq,
        )
        sealed = request.sealed  # each read of a bytes field copies it: read once
        try:
            payload = session.request_aead.decrypt(
                session_nonce(session.keys.request_iv, seq), sealed, aad
            )
        except (InvalidTag, ValueError) as exc:  # one opaque error, as for one-shot requests
            raise DecryptionError("sealed request could not be opened") from exc
        session.accept(seq)
        tenant = self._tenants.get(request.tenant)
        if tenant is None or tenant.key_id != session.key_id:
            self.sessions.drop(session_id)
            raise AuthError(f"invalid API key for tenant {request.tenant!r}")
        return OpenedRequest(
            method=method,
            tenant=request.tenant,
            request_id=bytes(request.request_id),
            response_key=session.keys.response_key,
            payload=payload,
            key_id=session.key_id,
            digest=session_request_digest(session_id, seq, sealed[-GCM_TAG_LEN:]),
            receipt_version=session.receipt_version,
        )

    @stage("seal")
    def respond(
        self,
        opened: OpenedRequest,
        payload: bytes,
        receipt: str,
        *,
        seq: int = 0,
        final: bool = True,
    ) -> common_pb2.SealedResponse:
        return seal_response(
            opened.response_key,
            method=opened.method,
            request_id=opened.request_id,
            payload=payload,
            receipt=receipt,
            seq=seq,
            final=final,
            random=self._random,
            replica=self.replica_certificate if receipt else b"",
            session_idle_seconds=opened.session_idle_seconds,
        )
