"""Opening sealed requests and sealing responses: the only door into the enclave's logic."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.message import DecodeError

from veil.enclave._config import Tenant
from veil.enclave._errors import AuthError
from veil.enclave._keys import KeyRing
from veil.enclave._replay import ReplayGuard
from veil.sdk.errors import DecryptionError, ProtocolError
from veil.sdk.evidence import to_ms
from veil.sdk.protocol import (
    PROTOCOL_VERSION,
    REQUEST_ID_LEN,
    RESPONSE_KEY_LEN,
    Suite,
    request_info,
)
from veil.sdk.sealing import request_digest, seal_response
from veil.v1 import common_pb2

__all__ = ["Gateway", "OpenedRequest"]


@dataclass(frozen=True)
class OpenedRequest:
    """A request that decrypted, is fresh, was never seen before, and whose API key is valid."""

    method: str
    tenant: str
    request_id: bytes
    response_key: bytes = b""
    payload: bytes = b""
    key_id: str = ""
    request_digest: str = ""  # SHA-256 of the sealed bytes, as receipts name the request

    def __repr__(self) -> str:  # never print keys or payloads
        return f"OpenedRequest(method={self.method!r}, tenant={self.tenant!r})"


class Gateway:
    def __init__(
        self,
        *,
        keys: KeyRing,
        replay: ReplayGuard,
        tenants: Mapping[str, Tenant],
        clock: Callable[[], datetime],
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._keys = keys
        self._replay = replay
        self._tenants = tenants
        self._clock = clock
        self._random = random

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
        now = self._clock()
        epoch = self._keys.find(request.claims_digest, now)
        info = request_info(
            method=method,
            tenant=request.tenant,
            request_id=request.request_id,
            timestamp_ms=request.timestamp_ms,
            claims_digest=request.claims_digest,
        )
        try:
            plaintext = suite.hpke.decrypt(request.sealed, epoch.private_keys[suite], info)
        except Exception as exc:  # any HPKE failure is one opaque error
            raise DecryptionError("sealed request could not be opened") from exc
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
        return OpenedRequest(
            method=method,
            tenant=request.tenant,
            request_id=bytes(request.request_id),
            response_key=bytes(body.response_key),
            payload=bytes(body.payload),
            key_id=tenant.key_id,
            request_digest=request_digest(request),
        )

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
        )
