"""The client logic shared by ``Client`` and ``AsyncClient``: pure steps, no I/O.

The two clients differ only in how they await the channel; everything that decides what is sent
and what is accepted lives here, once.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError, Message

from veil.sdk._models import ModelInfo
from veil.sdk._session import ClientSession
from veil.sdk._wire import infer_request_bytes
from veil.sdk.attestation._policy import AttestationPolicy
from veil.sdk.audit._receipt import Receipt, verify_receipt
from veil.sdk.errors import (
    AuditFailure,
    AuditLogError,
    ConfigError,
    ConfigFailure,
    DecryptionError,
    ProtocolError,
    RemoteError,
)
from veil.sdk.evidence import AttestedEnclave, Evidence, to_ms, verify_enclave
from veil.sdk.protocol import (
    MODEL_KEY_LEN,
    NONCE_LEN,
    SESSION_SECRET_LEN,
    Method,
    Suite,
    session_keys,
)
from veil.sdk.replicas import ReplicaIdentity, verify_replica_certificate
from veil.sdk.sealing import (
    RECEIPT_VERSION,
    SEALED_ERROR_KEY,
    SealedCall,
    bounded_message,
    clear_message,
    encrypt_chunk,
    open_error,
    open_response,
    request_digest,
    seal_request,
    seal_session_request,
)
from veil.sdk.tensors import from_proto, to_proto, wire_array
from veil.v1 import attestation_pb2, common_pb2, inference_pb2, models_pb2, training_pb2

__all__ = ["Challenge", "ClientCore", "TlsOptions", "remote_error"]

REASON_KEY = "veil-reason"
MAX_RECEIPTS = 10_000
DEFAULT_CHUNK = 1024 * 1024
M = TypeVar("M", bound=Message)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class TlsOptions:
    """Channel TLS: server roots (PEM), and for mutual TLS a client certificate and key."""

    root_certificates: bytes | None = None
    client_certificate: bytes | None = None
    client_key: bytes | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.client_key,
            certificate_chain=self.client_certificate,
        )


@dataclass(frozen=True)
class Challenge:
    nonce: bytes
    issued_at: datetime

    def request(self) -> attestation_pb2.AttestationRequest:
        return attestation_pb2.AttestationRequest(nonce=self.nonce)


def remote_error(
    exc: grpc.RpcError, call: SealedCall | None = None, *, seq: int = 0
) -> RemoteError:
    """A gRPC error as a ``RemoteError`` carrying the enclave's ``veil-reason``.

    For a sealed ``call`` the detailed message travels sealed in the trailer
    ``veil-sealed-error-bin``, at position ``seq`` (the number of messages the call already
    received; 0 for unary calls). If it opens, its code, reason and message are the error's;
    if a trailer is there but does not open (tampered, replayed, moved), the detail is only the
    fixed clear message for the reason, never the unopenable text. Without a trailer (the
    request never opened: bad version, replay, wrong key...) the clear message is all there is.
    """
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    reason = ""
    sealed: bytes | None = None
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == REASON_KEY:
            reason = value if isinstance(value, str) else value.decode()
        elif key == SEALED_ERROR_KEY and isinstance(value, bytes):
            sealed = value
    name = code.name if code is not None else "UNKNOWN"
    if call is None or sealed is None:
        return RemoteError(name, bounded_message(details or ""), reason=reason)
    try:
        error = open_error(call, sealed, seq=seq)
    except DecryptionError:
        return RemoteError(name, clear_message(reason), reason=reason)
    return RemoteError(error.code or name, error.message, reason=error.reason)


def _input_arrays(inputs: Mapping[str, npt.ArrayLike]) -> dict[str, npt.NDArray[np.generic]]:
    """The inference inputs as arrays; ``ConfigError`` for none, or one numpy cannot hold."""
    if not inputs:
        raise ConfigError(
            "inputs must name at least one tensor", reason=ConfigFailure.MISSING_VALUE
        )
    arrays = {}
    for name, value in inputs.items():
        try:
            arrays[name] = np.asarray(value)
        except (TypeError, ValueError) as exc:  # ragged lists, objects numpy cannot hold
            raise ConfigError(f"input {name!r} is not an array: {exc}") from exc
    return arrays


@dataclass
class ClientCore:
    """State and pure steps of a Veil client: attestation cache, sealing, framing."""

    tenant: str
    api_key: str
    policy: AttestationPolicy
    suite: Suite = Suite.X25519_SHA256_AES256GCM
    clock: Callable[[], datetime] = _utcnow
    random: Callable[[int], bytes] = os.urandom
    chunk_size: int = DEFAULT_CHUNK
    receipt_version: int = RECEIPT_VERSION  # 1: ask for per-call signed receipts (1.0/1.1)
    # Protocol 1.4: seal calls in a session (one HPKE step per session, not per call).
    sessions: bool = True
    attested: AttestedEnclave | None = field(default=None, init=False)
    session: ClientSession | None = field(default=None, init=False)
    receipts: deque[tuple[Receipt, str]] = field(
        default_factory=lambda: deque(maxlen=MAX_RECEIPTS), init=False
    )
    # Replicated deployments: the certified replica that answered each receipt, in order.
    answered_by: deque[ReplicaIdentity] = field(
        default_factory=lambda: deque(maxlen=MAX_RECEIPTS), init=False
    )
    _replicas: dict[bytes, ReplicaIdentity] = field(default_factory=dict, init=False)

    def __repr__(self) -> str:  # never show the API key
        return f"ClientCore(tenant={self.tenant!r}, suite={self.suite.name})"

    # -- attestation ----------------------------------------------------------------------

    def challenge(self) -> Challenge:
        return Challenge(nonce=self.random(NONCE_LEN), issued_at=self.clock())

    def accept(
        self, challenge: Challenge, evidence: attestation_pb2.AttestationEvidence
    ) -> AttestedEnclave:
        """Verify evidence answering ``challenge``; cache it. Raises ``AttestationError``."""
        self.attested = None
        attested = verify_enclave(
            Evidence.from_proto(evidence),
            nonce=challenge.nonce,
            policy=self.policy,
            now=self.clock(),
            challenge_issued_at=challenge.issued_at,
        )
        self.attested = attested
        return attested

    def cached(self) -> AttestedEnclave | None:
        """The cached attestation while it is valid; ``None`` means attest first."""
        if self.attested is not None and self.attested.is_valid_at(self.clock()):
            return self.attested
        return None

    def invalidate(self) -> None:
        self.attested = None
        self.session = None

    def drop_session(self) -> None:
        """Forget the session (the enclave no longer holds it): the next call opens one."""
        self.session = None

    # -- sealing --------------------------------------------------------------------------

    def seal(
        self,
        enclave: AttestedEnclave,
        method: Method,
        message: Message | bytes,
        *,
        session: bool = True,
        wire: bool = False,
    ) -> SealedCall:
        """Seal a call: in the open session if there is one, else with HPKE (asking for one).

        ``session=False``: HPKE, neither in nor opening a session (server streams, whose
        ``session-expired`` refusal would only show once the stream is read). ``wire=True``: a
        caller that sends ``SealedCall.wire`` when it is set (then ``request`` lacks ``sealed``).
        """
        now = self.clock()
        payload = message if isinstance(message, bytes) else message.SerializeToString()
        current = self.session if session else None
        if current is not None:
            seq = current.take(enclave.claims_digest, now.timestamp())
            if seq is not None:
                return seal_session_request(
                    current.keys,
                    seq,
                    method=method.value,
                    tenant=self.tenant,
                    payload=payload,
                    timestamp_ms=to_ms(now),
                    claims_digest=enclave.claims_digest,
                    random=self.random,
                    wire=wire,
                )
            self.session = None
        return seal_request(
            enclave,
            method=method.value,
            tenant=self.tenant,
            api_key=self.api_key,
            payload=payload,
            timestamp_ms=to_ms(now),
            suite=self.suite,
            random=self.random,
            receipt_version=self.receipt_version,
            session_secret=self.random(SESSION_SECRET_LEN) if session and self.sessions else b"",
        )

    def open(
        self,
        enclave: AttestedEnclave,
        call: SealedCall,
        response: common_pb2.SealedResponse,
        message: M,
        *,
        seq: int = 0,
        stream: bool = False,
    ) -> M:
        """Open a sealed response, verify its audit receipt on arrival, parse the payload.

        Unary responses are message 0 and final. In a stream (``stream=True``) message ``seq``
        is opened; only the final one carries a receipt, covering the final payload.
        """
        opened = open_response(call, response, seq=seq)
        if not stream and not opened.final:
            raise ProtocolError("a unary response must be final")
        if stream and not opened.final:
            return self._parse(opened.payload, message)
        log_key = enclave.log_verifier
        identity: ReplicaIdentity | None = None
        if enclave.claims.manifest_sha256:  # replicated: the answering replica's log key
            identity = self._replica(enclave, opened.replica)
            log_key = identity.log_verifier
        if log_key is not None:
            if not opened.receipt:
                raise AuditLogError(
                    "enclave answered without an audit receipt", reason=AuditFailure.MISSING
                )
            receipt = verify_receipt(
                opened.receipt,
                log_key,
                tenant=self.tenant,
                request_digest=call.digest or request_digest(call.request),
                response_digest=hashlib.sha256(opened.payload).hexdigest(),
            )
            self.receipts.append((receipt, opened.receipt))
            if identity is not None:
                self.answered_by.append(identity)
        parsed = self._parse(opened.payload, message)
        if call.session_secret and opened.session_idle_seconds > 0:
            self.session = ClientSession(
                keys=session_keys(
                    call.session_secret, tenant=self.tenant, claims_digest=enclave.claims_digest
                ),
                claims_digest=enclave.claims_digest,
                idle_seconds=float(opened.session_idle_seconds),
                last_used=self.clock().timestamp(),
            )
        return parsed

    def answering(self, enclave: AttestedEnclave) -> AttestedEnclave:
        """``enclave`` as the replica that sent the last response: in a replicated deployment
        its audit log key is that replica's (certified), for checkpoints, proofs and training
        certificates; elsewhere ``enclave`` itself."""
        if not enclave.claims.manifest_sha256:
            return enclave
        if not self.answered_by:
            raise AuditLogError(
                "no replica of this deployment has answered yet", reason=AuditFailure.MISSING
            )
        replica = self.answered_by[-1]
        claims = replace(
            enclave.claims, audit_log_key=replica.log_key, audit_log_origin=replica.log_origin
        )
        return replace(enclave, claims=claims)

    def _replica(self, enclave: AttestedEnclave, certificate: bytes) -> ReplicaIdentity:
        """The replica that answered, certified by the attested coordinator key, its own
        evidence re-verified under this client's policy (once per certificate)."""
        if not certificate:
            raise AuditLogError(
                "replicated enclave answered without its replica certificate",
                reason=AuditFailure.MISSING,
            )
        cache_key = hashlib.sha256(enclave.claims.audit_log_key + certificate).digest()
        found = self._replicas.get(cache_key)
        if found is None:
            found = verify_replica_certificate(
                certificate,
                coordinator_key=enclave.claims.audit_log_key,
                manifest_sha256=enclave.claims.manifest_sha256,
                policy=self.policy,
                now=self.clock(),
            )
            if len(self._replicas) >= MAX_RECEIPTS:
                self._replicas.clear()
            self._replicas[cache_key] = found
        return found

    @staticmethod
    def _parse(payload: bytes, message: M) -> M:
        try:
            message.ParseFromString(payload)
        except DecodeError as exc:
            raise ProtocolError(f"enclave sent a malformed {type(message).__name__}") from exc
        return message

    # -- models ---------------------------------------------------------------------------

    def upload(
        self, enclave: AttestedEnclave, data: bytes, name: str, on_chunk: Callable[[int], object]
    ) -> tuple[SealedCall, Iterator[models_pb2.UploadMessage]]:
        """A model upload: sealed header (with a fresh model key), then encrypted chunks."""
        key = self.random(MODEL_KEY_LEN)
        header = models_pb2.UploadHeader(
            name=name, model_key=key, size=len(data), sha256=hashlib.sha256(data).digest()
        )
        return self._upload(enclave, Method.UPLOAD_MODEL, header, key, data, on_chunk)

    def upload_dataset(
        self,
        enclave: AttestedEnclave,
        data: bytes,
        fmt: str,
        label_column: str,
        on_chunk: Callable[[int], object],
    ) -> tuple[SealedCall, Iterator[models_pb2.UploadMessage]]:
        """A dataset upload: the same framing as models, with a DatasetHeader."""
        key = self.random(MODEL_KEY_LEN)
        header = training_pb2.DatasetHeader(
            format=fmt,
            data_key=key,
            size=len(data),
            sha256=hashlib.sha256(data).digest(),
            label_column=label_column,
        )
        return self._upload(enclave, Method.UPLOAD_DATASET, header, key, data, on_chunk)

    def _upload(
        self,
        enclave: AttestedEnclave,
        method: Method,
        header: Message,
        key: bytes,
        data: bytes,
        on_chunk: Callable[[int], object],
    ) -> tuple[SealedCall, Iterator[models_pb2.UploadMessage]]:
        call = self.seal(enclave, method, header)
        model_key = key
        size = self.chunk_size

        def messages() -> Iterator[models_pb2.UploadMessage]:
            yield models_pb2.UploadMessage(header=call.request)
            count = max(1, -(-len(data) // size))
            for seq in range(count):
                piece = data[seq * size : (seq + 1) * size]
                final = seq == count - 1
                ciphertext = encrypt_chunk(
                    model_key, request_id=call.request_id, seq=seq, final=final, data=piece
                )
                yield models_pb2.UploadMessage(
                    chunk=models_pb2.ModelChunk(seq=seq, final=final, ciphertext=ciphertext)
                )
                on_chunk(len(piece))

        return call, messages()

    @staticmethod
    def model_infos(response: models_pb2.ListModelsResponse) -> list[ModelInfo]:
        return [ModelInfo.from_proto(m) for m in response.models]

    # -- inference ------------------------------------------------------------------------

    @staticmethod
    def infer_request(
        model: str, inputs: Mapping[str, npt.ArrayLike], output_names: Sequence[str] | None
    ) -> inference_pb2.InferRequest:
        tensors = {name: to_proto(a) for name, a in _input_arrays(inputs).items()}
        return inference_pb2.InferRequest(
            model=model, inputs=tensors, output_names=list(output_names or ())
        )

    @staticmethod
    def infer_payload(
        model: str, inputs: Mapping[str, npt.ArrayLike], output_names: Sequence[str] | None
    ) -> bytes:
        """``infer_request(...)`` serialized, each input's data copied once (``veil.sdk._wire``)."""
        arrays = {name: wire_array(a) for name, a in _input_arrays(inputs).items()}
        return infer_request_bytes(model, arrays, list(output_names or ()))

    @staticmethod
    def infer_result(response: inference_pb2.InferResponse) -> dict[str, npt.NDArray[np.generic]]:
        return {name: from_proto(t) for name, t in response.outputs.items()}
