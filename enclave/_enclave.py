"""The enclave's domain logic, free of gRPC: attestation, model upload, registry, inference."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from google.protobuf.message import DecodeError

from enclave._config import ServerConfig, ensure_config
from enclave._errors import InvalidInput, TooLarge
from enclave._gateway import Gateway, OpenedRequest
from enclave._keys import KeyEpoch, KeyRing
from enclave._measurement import measure
from enclave._onnx import InferenceEngine, validate_onnx
from enclave._replay import ReplayGuard
from enclave._store import ModelRecord, ModelStore, parse_ref
from enclave.tee._base import TeeProvider
from enclave.tee._simulated import SimulatedSnp
from protos.veil.v1 import inference_pb2, models_pb2
from sdk._attested import Evidence
from sdk._errors import ProtocolError
from sdk._protocol import MODEL_KEY_LEN, NONCE_LEN, report_data_for
from sdk._sealing import decrypt_chunk
from sdk._tensors import from_proto, to_proto

__all__ = ["Enclave", "UploadSession"]

log = logging.getLogger("veil.enclave")
GCM_TAG = 16


def _utcnow() -> datetime:
    return datetime.now(UTC)


def model_info(record: ModelRecord) -> models_pb2.ModelInfo:
    def specs(items: Iterable[object]) -> list[models_pb2.TensorSpec]:
        return [
            models_pb2.TensorSpec(name=s.name, dtype=s.dtype, shape=list(s.shape))  # type: ignore[attr-defined]
            for s in items
        ]

    return models_pb2.ModelInfo(
        name=record.name,
        version=record.version,
        ref=record.ref,
        sha256=record.sha256,
        size=record.size,
        created_at_ms=record.created_at_ms,
        inputs=specs(record.inputs),
        outputs=specs(record.outputs),
    )


@dataclass
class UploadSession:
    """An upload in progress: header opened, chunks arriving in order."""

    opened: OpenedRequest
    name: str
    model_key: bytes
    size: int
    sha256: bytes
    buffer: bytearray
    next_seq: int = 0
    done: bool = False


class Enclave:
    """Everything the service does, behind plain methods the thin servicers call."""

    def __init__(
        self,
        config: ServerConfig,
        tee: TeeProvider,
        *,
        clock: Callable[[], datetime] = _utcnow,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.tee = tee
        self.clock = clock
        self.measurement = measure(config)
        self._epoch_lock = threading.Lock()
        self.keys = KeyRing(self._new_epoch())
        self.gateway = Gateway(
            keys=self.keys,
            replay=ReplayGuard(config.replay_window_seconds * 1000),
            tenants=config.tenants,
            clock=clock,
            random=random,
        )
        self.store = ModelStore(
            config.data_dir / "models",
            storage_key=lambda tenant: tee.sealing_key(b"models/" + tenant.encode()),
            clock=clock,
        )
        self.engine = InferenceEngine(config.providers)
        log.info(
            "enclave ready: tee=%s measurement=%s providers=%s",
            tee.name,
            self.measurement.hex(),
            ",".join(self.engine.providers),
        )

    @classmethod
    def open(cls, data_dir: Path, *, clock: Callable[[], datetime] = _utcnow) -> Enclave:
        """Load (or create) the data directory's config and simulated TEE, and start."""
        config, _ = ensure_config(data_dir)
        return cls(config, SimulatedSnp.load_or_create(data_dir), clock=clock)

    # -- keys and attestation -------------------------------------------------------------

    def _new_epoch(self) -> KeyEpoch:
        return KeyEpoch.generate(
            now=self.clock(),
            lifetime=timedelta(seconds=self.config.key_epoch_seconds),
            measurement=self.measurement,
        )

    def rotate_keys(self) -> None:
        """Start a new key epoch; the previous one keeps working until it expires."""
        with self._epoch_lock:
            self.keys.rotate(self._new_epoch())
        log.info("sealing keys rotated: key_id=%s", self.keys.current.key_id)

    def _fresh_epoch(self) -> KeyEpoch:
        with self._epoch_lock:
            epoch = self.keys.current
            lifetime = timedelta(seconds=self.config.key_epoch_seconds)
            if self.clock() >= epoch.expires_at - lifetime / 10:
                self.keys.rotate(self._new_epoch())
                epoch = self.keys.current
            return epoch

    def attestation(self, nonce: bytes) -> Evidence:
        if len(nonce) != NONCE_LEN:
            raise ProtocolError(f"nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
        epoch = self._fresh_epoch()
        raw = self.tee.evidence(report_data_for(nonce, epoch.digest), self.measurement)
        return Evidence(
            tee=raw.tee, report=raw.report, cert_chain=raw.cert_chain, claims=epoch.claims
        )

    # -- models ---------------------------------------------------------------------------

    def begin_upload(self, opened: OpenedRequest) -> UploadSession:
        header = models_pb2.UploadHeader()
        try:
            header.ParseFromString(opened.payload)
        except DecodeError as exc:
            raise ProtocolError("upload header is malformed") from exc
        parse_ref(header.name)
        if "@" in header.name:
            raise InvalidInput("upload names a model, not a version: the enclave assigns versions")
        if len(header.model_key) != MODEL_KEY_LEN:
            raise ProtocolError(f"model key must be {MODEL_KEY_LEN} bytes")
        if header.size == 0:
            raise InvalidInput("model is empty")
        if header.size > self.config.max_model_bytes:
            raise TooLarge(f"model is {header.size} bytes, limit is {self.config.max_model_bytes}")
        if len(header.sha256) != 32:
            raise ProtocolError("upload header sha256 must be 32 bytes")
        return UploadSession(
            opened=opened,
            name=header.name,
            model_key=bytes(header.model_key),
            size=header.size,
            sha256=bytes(header.sha256),
            buffer=bytearray(),
        )

    def add_chunk(self, upload: UploadSession, chunk: models_pb2.ModelChunk) -> None:
        if upload.done:
            raise ProtocolError("chunk after the final chunk")
        if chunk.seq != upload.next_seq:
            raise ProtocolError(f"chunk {chunk.seq} arrived, expected {upload.next_seq}")
        if len(chunk.ciphertext) > self.config.max_chunk_bytes + GCM_TAG:
            raise TooLarge(f"chunk exceeds the {self.config.max_chunk_bytes}-byte limit")
        data = decrypt_chunk(
            upload.model_key,
            request_id=upload.opened.request_id,
            seq=chunk.seq,
            final=chunk.final,
            ciphertext=chunk.ciphertext,
        )
        if len(upload.buffer) + len(data) > upload.size:
            raise InvalidInput("upload is larger than its header says")
        upload.buffer += data
        upload.next_seq += 1
        upload.done = chunk.final

    def finish_upload(self, upload: UploadSession) -> ModelRecord:
        if not upload.done:
            raise InvalidInput(
                f"upload truncated: stream ended after {upload.next_seq} chunk(s) "
                "with no final chunk"
            )
        data = bytes(upload.buffer)
        upload.buffer.clear()
        if len(data) != upload.size:
            raise InvalidInput(f"upload is {len(data)} bytes, header says {upload.size}")
        if hashlib.sha256(data).digest() != upload.sha256:
            raise InvalidInput("upload does not match the SHA-256 in its header")
        validated = validate_onnx(
            data,
            max_bytes=self.config.max_model_bytes,
            allowed_domains=self.config.allowed_domains,
        )
        record = self.store.register(upload.opened.tenant, upload.name, data, validated)
        log.info("model registered: tenant=%s ref=%s", record.tenant, record.ref)
        return record

    def list_models(self, tenant: str) -> list[ModelRecord]:
        return self.store.records(tenant)

    def delete_model(self, tenant: str, ref: str) -> list[ModelRecord]:
        records = self.store.delete(tenant, ref)
        for r in records:
            self.engine.evict(f"{tenant}/{r.name}@{r.version}")
        return records

    # -- inference ------------------------------------------------------------------------

    def infer(
        self, tenant: str, request: inference_pb2.InferRequest
    ) -> inference_pb2.InferResponse:
        record = self.store.resolve(tenant, request.model)
        limit = self.config.max_message_bytes
        total = sum(len(t.data) for t in request.inputs.values())
        if total > limit:
            raise TooLarge(f"inputs are {total} bytes, limit is {limit}")
        inputs = {name: from_proto(t, max_bytes=limit) for name, t in request.inputs.items()}
        outputs = self.engine.run(
            f"{tenant}/{record.ref}",
            lambda: self.store.load(record),
            inputs,
            list(request.output_names),
        )
        return inference_pb2.InferResponse(
            model=record.ref, outputs={n: to_proto(a) for n, a in outputs.items()}
        )
