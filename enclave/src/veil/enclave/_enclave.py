"""The enclave's domain logic, free of gRPC: attestation, model upload, registry, inference."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError, Message

from veil.enclave._config import SYSTEM_LOG, ServerConfig
from veil.enclave._datasets import remove_orphan_blobs
from veil.enclave._errors import AuthError, InvalidInput, TooLarge
from veil.enclave._files import remove_temp_files
from veil.enclave._gateway import Gateway, OpenedRequest
from veil.enclave._handled import Handled, model_info
from veil.enclave._keys import KeyEpoch, KeyRing
from veil.enclave._measurement import measure
from veil.enclave._onnx import InferenceEngine, validate_onnx
from veil.enclave._parts import EnclaveParts
from veil.enclave._replay import MemoryReplayStore, ReplayStore
from veil.enclave._sessions import SessionTable
from veil.enclave._spool import UploadBuffer, remove_spool_files
from veil.enclave._store import ModelStore, parse_ref
from veil.enclave._telemetry import opening, stage
from veil.enclave._training import TrainingDesk
from veil.enclave._watermark import WatermarkDesk
from veil.enclave.audit import AuditLog, EventTally, ExportFormat, ExportResult, Signer
from veil.enclave.tee._base import TeeProvider
from veil.enclave.tee._nvidia_gpu import GpuEvidenceSource
from veil.sdk.attestation import gpu_nonce_for
from veil.sdk.audit import AuditRecord, Checkpoint, DigestKey, EventType, Outcome, SignedNote
from veil.sdk.errors import AuditLogError, ProtocolError
from veil.sdk.evidence import Evidence, from_ms
from veil.sdk.protocol import MODEL_KEY_LEN, NONCE_LEN, report_data_for
from veil.sdk.sealing import decrypt_chunk
from veil.sdk.tensors import from_proto, tensor_parts, to_proto
from veil.v1 import audit_pb2, common_pb2, inference_pb2, models_pb2, training_pb2

if TYPE_CHECKING:
    from veil.enclave.scaleout import Replica

__all__ = ["Enclave", "UploadSession"]

log = logging.getLogger("veil.enclave")
GCM_TAG = 16
AUDIT_LOG_NAME = "veil-enclave"
DATASET_FORMATS = ("npz", "csv", "parquet")
EXPORT_CHUNK_BYTES = 1024 * 1024  # per message of a streamed audit export
AUDIT_RESERVE_BYTES = 4 * 1024 * 1024  # preallocated for the audit log, released on ENOSPC


def _utcnow() -> datetime:
    return datetime.now(UTC)


# Inputs at least this large have their HMAC (for the audit record) computed on a helper thread
# while ONNX Runtime runs: both release the GIL, so the hash costs no wall time up to ORT's.
PARALLEL_HMAC_BYTES = 256 * 1024
_INPUT_DIGESTS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="veil-inputs-hmac")


def _data_bytes(tensor: common_pb2.Tensor) -> int:
    """``len(tensor.data)`` without reading ``data`` (each read copies it out of the message):
    the tensor's serialized size less its other fields and the data field's tag and length."""
    rest = tensor.ByteSize() - common_pb2.Tensor(dtype=tensor.dtype, shape=tensor.shape).ByteSize()
    for width in range(1, 11):  # the data length's varint width
        size = rest - 1 - width
        if size >= 0 and max(1, -(-size.bit_length() // 7)) == width:
            return size
    return 0


def _serialized_inputs(
    request: inference_pb2.InferRequest, arrays: Mapping[str, npt.NDArray[np.generic]]
) -> Iterator[bytes | memoryview]:
    """The bytes of the input ``Tensor`` messages, serialized, in name order, without copying.

    The same bytes as ``b"".join(request.inputs[n].SerializeToString() for n in sorted(...))``
    (fields in number order: dtype, shape, then ``data`` as tag 3, length, bytes), but the data
    is the decoded arrays' own buffer rather than a fresh 1 MB copy per serialization.
    """
    for name in sorted(request.inputs):
        yield from tensor_parts(arrays[name])


@dataclass
class UploadSession:
    """An upload (model or dataset) in progress: header opened, chunks arriving in order."""

    opened: OpenedRequest
    header: Message
    key: bytes
    size: int
    sha256: bytes
    buffer: UploadBuffer  # at most limits.upload_memory_bytes in memory, the rest sealed on disk
    next_seq: int = 0
    done: bool = False

    def close(self) -> None:
        """Drop what arrived (its spill file included); idempotent."""
        self.buffer.close()


class Enclave:
    """Everything the service does, behind plain methods the thin servicers call."""

    def __init__(
        self,
        config: ServerConfig,
        tee: TeeProvider,
        *,
        clock: Callable[[], datetime] = _utcnow,
        random: Callable[[int], bytes] = os.urandom,
        gpu: GpuEvidenceSource | None = None,
        tdx_collateral: Mapping[str, bytes] | None = None,
        parts: EnclaveParts | None = None,
        replica: Replica | None = None,
    ) -> None:
        """``parts``: a worker process's shared state (``veil.enclave._workers``); its
        supervisor records the service's start and stop and cleans the data directory.
        ``replica``: this enclave is a replica of a replicated deployment
        (``veil.enclave.scaleout``): its keys come from attested key release, its replay
        guard and budget ledger are the deployment's (PostgreSQL)."""
        self.config = config
        self.replica = replica
        self._parts = parts
        self.tee = tee
        self.gpu = gpu
        self._tdx_collateral = dict(tdx_collateral or {})
        self.clock = clock
        self.measurement = parts.measurement if parts is not None else measure(config)
        if replica is not None:  # it trusts its coordinator: that is part of what it is
            self.measurement = replica.bind_measurement(self.measurement)
        # What a crash leaves: spooled uploads, write_atomic temporaries (never the only copy).
        stale = 0
        if parts is None:  # a worker's siblings may have uploads in flight
            stale = remove_spool_files(config.data_dir) + sum(
                remove_temp_files(config.data_dir / part)
                for part in ("models", "datasets", "audit")
                if replica is None or part == "audit"  # a replica's models: a shared volume
            )
            if replica is None:  # a replica's datasets: another replica may be uploading
                stale += remove_orphan_blobs(config.data_dir / "datasets")
        if stale:
            log.info("removed %d temporary file(s) left by an earlier run", stale)
        self.audit = (
            parts.audit
            if parts is not None
            else AuditLog(
                config.data_dir / "audit",
                Signer.generate(AUDIT_LOG_NAME if replica is None else replica.log_name),
                clock=clock,
                digest_key=DigestKey(tee.sealing_key(b"audit/digest")),
                checkpoint_interval=1.0,
                headroom_bytes=min(config.limits.audit_headroom_bytes, AUDIT_RESERVE_BYTES),
            )
        )
        self._close_lock = threading.Lock()
        self._closed = False
        # Calls anyone can make (attestation, refused keys) are counted, not logged one by one.
        self.tally = EventTally(
            self.audit,
            clock=clock,
            window_seconds=config.limits.refusal_window_seconds,
            digest=self.audit.digest,
        )
        self._epoch_lock = threading.Lock()
        self.keys: KeyRing
        replay: ReplayStore
        if replica is not None:  # attested key release: no key, no request, until admitted
            replica.join(
                tee,
                measurement=self.measurement,
                log_key=self.audit.verifier.public_key,
                log_origin=self.audit.signer.name,
            )
            self.keys = replica.key_ring
            self.tee = tee = replica.released_tee(tee)
            replay = replica.replay_store(config.replay_window_seconds * 1000)
        else:
            self.keys = parts.keys if parts is not None else KeyRing(self._new_epoch())
            replay = (
                parts.replay
                if parts is not None
                else MemoryReplayStore(config.replay_window_seconds * 1000)
            )
        self.gateway = Gateway(
            keys=self.keys,
            replay=replay,
            tenants=config.tenants,
            clock=clock,
            random=random,
            sessions=SessionTable(
                max_sessions=config.limits.max_sessions,
                idle_seconds=config.limits.session_idle_seconds,
            ),
        )
        if replica is not None:
            replica.attach(self.gateway)
        self.store = (
            ModelStore(
                config.data_dir / "models",
                storage_key=lambda tenant: tee.sealing_key(b"models/" + tenant.encode()),
                clock=clock,
                headroom=config.limits.audit_headroom_bytes,
                sweep=parts is None,
            )
            if replica is None
            else replica.model_store(  # registry in PostgreSQL, blobs on the shared volume
                config.data_dir / "models",
                storage_key=lambda tenant: tee.sealing_key(b"models/" + tenant.encode()),
                clock=clock,
                headroom=config.limits.audit_headroom_bytes,
            )
        )
        self.engine = InferenceEngine(
            config.providers, intra_op_threads=parts.intra_op_threads if parts else 0
        )
        log.info(
            "enclave ready: tee=%s measurement=%s providers=%s",
            tee.name,
            self.measurement.hex(),
            ",".join(self.engine.providers),
        )
        if parts is None:
            self.record(
                EventType.SERVICE_START,
                details={"measurement": self.measurement.hex(), "audit_log_key": self.audit.vkey},
            )

    def close(self) -> None:
        """Record the stop, flush and close every audit log (after the server stopped).

        Never raises: a log that cannot take the stop record must not keep the others open.
        Closing twice is harmless.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self.tally.close()
        if self._parts is None:
            try:
                self.record(EventType.SERVICE_STOP)
            except AuditLogError as exc:
                log.error("service stop not recorded: %s", exc)
        else:
            self._parts.replay.close()
        self.audit.close()
        if self.replica is not None:
            self.replica.close()

    # -- audit ----------------------------------------------------------------------------

    def record(
        self,
        event: EventType,
        *,
        tenant: str = SYSTEM_LOG,
        origin: str = "enclave",
        outcome: Outcome = Outcome.SUCCESS,
        key_id: str | None = None,
        resource: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> int:
        """Append a record; returns once it is durable."""
        return self.audit.append(
            AuditRecord.create(
                now=self.clock(),
                event=event,
                outcome=outcome,
                tenant=tenant,
                origin=origin,
                key_id=key_id,
                resource=resource,
                details=details,
            )
        )

    @opening
    def open_request(
        self, request: common_pb2.SealedRequest, method: str, origin: str
    ) -> OpenedRequest:
        """Open a sealed request; an authentication failure is counted before it is refused.

        Failures are aggregated (``EventTally``): a caller without a key costs the log at most
        one record per tenant, method and window, never one per call.
        """
        try:
            return self.gateway.open(request, method)
        except AuthError:
            known = request.tenant in self.config.tenants
            self.tally.note(
                tenant=request.tenant if known else SYSTEM_LOG,
                event=EventType.AUTH_FAILURE,
                outcome=Outcome.DENIED,
                resource=method,
                peer=origin,
                claim=None if known else request.tenant,
            )
            raise

    def respond(
        self,
        opened: OpenedRequest,
        handled: Handled,
        *,
        event: EventType,
        origin: str,
        seq: int = 0,
    ) -> common_pb2.SealedResponse:
        """Record the call durably, then seal the (final) answer with the log's receipt."""
        payload = handled.message.SerializeToString()
        details = {
            **handled.details,
            "request_sha256": opened.request_digest,
            "response_hmac": self.audit.digest(payload),
        }
        record = AuditRecord.create(
            now=self.clock(),
            event=event,
            outcome=Outcome.SUCCESS,
            tenant=opened.tenant,
            origin=origin,
            key_id=opened.key_id,
            resource=handled.resource,
            details=details,
        )
        appended = self.audit.append_with_receipt(
            record,
            request_digest=opened.request_digest,
            response_digest=hashlib.sha256(payload).hexdigest(),
            model_digest=handled.model_digest,
            receipt_version=opened.receipt_version,
        )
        return self.gateway.respond(opened, payload, appended.receipt, seq=seq)

    def progress(
        self, opened: OpenedRequest, message: Message, *, seq: int
    ) -> common_pb2.SealedResponse:
        """A non-final message of a sealed stream (no record: the final one is recorded)."""
        return self.gateway.respond(opened, message.SerializeToString(), "", seq=seq, final=False)

    def record_failure(
        self, opened: OpenedRequest, event: EventType, origin: str, exc: BaseException
    ) -> None:
        self.record(
            event,
            tenant=opened.tenant,
            origin=origin,
            outcome=Outcome.FAILURE,
            key_id=opened.key_id,
            details={"request_sha256": opened.request_digest, "error": type(exc).__name__},
        )

    # -- keys and attestation -------------------------------------------------------------

    def _new_epoch(self) -> KeyEpoch:
        return KeyEpoch.generate(
            now=self.clock(),
            lifetime=timedelta(seconds=self.config.key_epoch_seconds),
            # Only the simulated TEE reports the code+config digest as its MEASUREMENT; real
            # hardware reports its launch digest, and the digest is bound through the claims.
            measurement=self.measurement if self.tee.name == "simulated" else b"",
            audit_log_key=self.audit.verifier.public_key,
            audit_log_origin=self.audit.signer.name,
        )

    def rotate_keys(self) -> None:
        """Start a new key epoch; the previous one keeps working until it expires."""
        if self.replica is not None:  # a replica's epochs come from its coordinator
            self.replica.refresh()
            return
        with self._epoch_lock:
            self.keys.rotate(self._new_epoch())
        log.info("sealing keys rotated: key_id=%s", self.keys.current.key_id)

    def _fresh_epoch(self) -> KeyEpoch:
        if self.replica is not None:  # the newest shared epoch already published
            return self.keys.current
        with self._epoch_lock:
            epoch = self.keys.current
            lifetime = timedelta(seconds=self.config.key_epoch_seconds)
            if self.clock() >= epoch.expires_at - lifetime / 10 and self._parts is not None:
                return self._parts.fresh_epoch()  # the supervisor rotates, for every worker
            if self.clock() >= epoch.expires_at - lifetime / 10:
                self.keys.rotate(self._new_epoch())
                epoch = self.keys.current
            return epoch

    def attestation(self, nonce: bytes, origin: str = "enclave") -> Evidence:
        """Evidence for ``nonce``; served even when the system log cannot be written (counted)."""
        if len(nonce) != NONCE_LEN:
            raise ProtocolError(f"nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
        epoch = self._fresh_epoch()
        report_data = report_data_for(nonce, epoch.digest)
        raw = self.tee.evidence(report_data, self.measurement)
        gpus: tuple[tuple[bytes, bytes], ...] = ()
        if self.gpu is not None:  # the GPU's nonce is bound to this very CPU report
            gpu = self.gpu.evidence(gpu_nonce_for(report_data))
            gpus = ((gpu.evidence, gpu.cert_chain_pem),)
        self.tally.note(
            tenant=SYSTEM_LOG,
            event=EventType.ATTESTATION_SERVED,
            resource=epoch.key_id,
            peer=origin,
        )
        return Evidence(
            tee=raw.tee,
            report=raw.report,
            cert_chain=raw.cert_chain,
            claims=epoch.claims,
            gpus=gpus,
            collateral=self._tdx_collateral if raw.tee == "tdx" else {},
        )

    # -- models ---------------------------------------------------------------------------

    def _begin(
        self,
        opened: OpenedRequest,
        header: Message,
        *,
        key: bytes,
        size: int,
        sha256: bytes,
        limit: int,
        what: str,
    ) -> UploadSession:
        if len(key) != MODEL_KEY_LEN:
            raise ProtocolError(f"{what} key must be {MODEL_KEY_LEN} bytes")
        if size == 0:
            raise InvalidInput(f"{what} is empty")
        if size > limit:
            raise TooLarge(f"{what} is {size} bytes, limit is {limit}")
        if len(sha256) != 32:
            raise ProtocolError("upload header sha256 must be 32 bytes")
        limits = self.config.limits
        buffer = UploadBuffer(
            self.config.data_dir,
            memory_bytes=limits.upload_memory_bytes,
            expected=size,
            headroom=limits.audit_headroom_bytes,
        )
        return UploadSession(
            opened=opened, header=header, key=key, size=size, sha256=sha256, buffer=buffer
        )

    def begin_upload(self, opened: OpenedRequest) -> UploadSession:
        header = models_pb2.UploadHeader()
        try:
            header.ParseFromString(opened.payload)
        except DecodeError as exc:
            raise ProtocolError("upload header is malformed") from exc
        parse_ref(header.name)
        if "@" in header.name:
            raise InvalidInput("upload names a model, not a version: the enclave assigns versions")
        return self._begin(
            opened,
            header,
            key=bytes(header.model_key),
            size=header.size,
            sha256=bytes(header.sha256),
            limit=self.config.max_model_bytes,
            what="model",
        )

    def add_chunk(self, upload: UploadSession, chunk: models_pb2.ModelChunk) -> None:
        if upload.done:
            raise ProtocolError("chunk after the final chunk")
        if chunk.seq != upload.next_seq:
            raise ProtocolError(f"chunk {chunk.seq} arrived, expected {upload.next_seq}")
        if len(chunk.ciphertext) > self.config.max_chunk_bytes + GCM_TAG:
            raise TooLarge(f"chunk exceeds the {self.config.max_chunk_bytes}-byte limit")
        data = decrypt_chunk(
            upload.key,
            request_id=upload.opened.request_id,
            seq=chunk.seq,
            final=chunk.final,
            ciphertext=chunk.ciphertext,
        )
        if len(upload.buffer) + len(data) > upload.size:
            raise InvalidInput("upload is larger than its header says")
        upload.buffer.append(data)
        upload.next_seq += 1
        upload.done = chunk.final

    @staticmethod
    def _complete(upload: UploadSession) -> bytes:
        if not upload.done:
            raise InvalidInput(
                f"upload truncated: stream ended after {upload.next_seq} chunk(s) "
                "with no final chunk"
            )
        try:
            data = upload.buffer.getvalue()
        finally:
            upload.close()
        if len(data) != upload.size:
            raise InvalidInput(f"upload is {len(data)} bytes, header says {upload.size}")
        if hashlib.sha256(data).digest() != upload.sha256:
            raise InvalidInput("upload does not match the SHA-256 in its header")
        return data

    @functools.cached_property
    def training(self) -> TrainingDesk:
        """Datasets, budgets and DP training (loaded on first use: it imports torch)."""
        if self.replica is None:
            return TrainingDesk(self)
        from veil.privacy import BudgetConfig

        ledger = self.replica.ledger(
            BudgetConfig(self.config.budget_epsilon, self.config.budget_delta)
        )
        return TrainingDesk(self, ledger=ledger)

    @functools.cached_property
    def watermarks(self) -> WatermarkDesk:
        return WatermarkDesk(self, lambda: self.training.datasets)

    def begin_dataset_upload(self, opened: OpenedRequest) -> UploadSession:
        header = training_pb2.DatasetHeader()
        try:
            header.ParseFromString(opened.payload)
        except DecodeError as exc:
            raise ProtocolError("dataset header is malformed") from exc
        if header.format not in DATASET_FORMATS:
            raise InvalidInput(
                f"dataset format {header.format!r} is not one of {', '.join(DATASET_FORMATS)}"
            )
        return self._begin(
            opened,
            header,
            key=bytes(header.data_key),
            size=header.size,
            sha256=bytes(header.sha256),
            limit=self.config.max_dataset_bytes,
            what="dataset",
        )

    def finish_dataset_upload(self, upload: UploadSession) -> Handled:
        data = self._complete(upload)
        assert isinstance(upload.header, training_pb2.DatasetHeader)
        return self.training.finish_dataset_upload(upload.opened.tenant, upload.header, data)

    def finish_upload(self, upload: UploadSession) -> Handled:
        data = self._complete(upload)
        validated = validate_onnx(
            data,
            max_bytes=self.config.max_model_bytes,
            allowed_domains=self.config.allowed_domains,
            limits=self.config.limits,
        )
        assert isinstance(upload.header, models_pb2.UploadHeader)
        record = self.store.register(upload.opened.tenant, upload.header.name, data, validated)
        log.info("model registered: tenant=%s", record.tenant)  # names stay out of INFO
        log.debug("model registered: tenant=%s ref=%s", record.tenant, record.ref)
        return Handled(
            model_info(record),
            resource=record.ref,
            details={"model_sha256": record.sha256, "size": record.size},
            model_digest=record.sha256,
        )

    def list_models(self, tenant: str) -> Handled:
        records = self.store.records(tenant)
        return Handled(
            models_pb2.ListModelsResponse(models=[model_info(r) for r in records]),
            details={"count": len(records)},
        )

    def delete_model(self, tenant: str, ref: str) -> Handled:
        records = self.store.delete(tenant, ref)
        for r in records:
            self.engine.evict(f"{tenant}/{r.name}@{r.version}")
        return Handled(
            models_pb2.ListModelsResponse(models=[model_info(r) for r in records]),
            resource=ref,
            details={"deleted": [r.ref for r in records]},
        )

    # -- inference ------------------------------------------------------------------------

    @stage("infer")
    def infer(self, tenant: str, request: inference_pb2.InferRequest) -> Handled:
        record = self.store.resolve(tenant, request.model)
        limit = self.config.max_message_bytes
        total = sum(_data_bytes(t) for t in request.inputs.values())
        if total > limit:
            raise TooLarge(f"inputs are {total} bytes, limit is {limit}")
        inputs = {name: from_proto(t, max_bytes=limit) for name, t in request.inputs.items()}
        digest: Future[str] | None = None
        if total >= PARALLEL_HMAC_BYTES:  # hashlib releases the GIL: hash while ORT runs
            digest = _INPUT_DIGESTS.submit(
                self.audit.digest_parts, list(_serialized_inputs(request, inputs))
            )
        outputs = self.engine.run(
            f"{tenant}/{record.ref}",
            lambda: self.store.load(record),
            inputs,
            list(request.output_names),
            limits=self.config.limits.for_model(tenant, record.name),
            batching=self.config.batching.for_model(tenant, record.name),
        )
        if digest is not None:
            inputs_hmac = digest.result()
        else:
            inputs_hmac = self.audit.digest_parts(_serialized_inputs(request, inputs))
        return Handled(
            inference_pb2.InferResponse(
                model=record.ref, outputs={n: to_proto(a) for n, a in outputs.items()}
            ),
            resource=record.ref,
            details={"model_sha256": record.sha256, "inputs_hmac": inputs_hmac},
            model_digest=record.sha256,
        )

    # -- the audit log, for its tenant ----------------------------------------------------

    def _checkpoint_for(self, tenant: str, size: int) -> str:
        """A signed checkpoint for exactly ``size`` (the current one, or a fresh signature)."""
        note = self.audit.checkpoint(tenant)
        if Checkpoint.from_text(SignedNote.from_text(note).text).size == size:
            return note
        return self.audit.signed_checkpoint(tenant, size)

    def audit_checkpoint(self, tenant: str) -> Handled:
        note = self.audit.checkpoint(tenant)
        return Handled(
            audit_pb2.CheckpointResponse(checkpoint=note, vkey=self.audit.vkey),
            details={"size": self.audit.size(tenant)},
        )

    def audit_inclusion(self, tenant: str, req: audit_pb2.InclusionProofRequest) -> Handled:
        current = self.audit.size(tenant)
        size = req.tree_size or current
        if size > current:
            raise InvalidInput(f"tree size {size} is beyond the log's {current}")
        if req.leaf_index >= size:
            raise InvalidInput(f"leaf {req.leaf_index} is not in a tree of size {size}")
        proof = self.audit.inclusion_proof(tenant, req.leaf_index, size)
        return Handled(
            audit_pb2.InclusionProofResponse(
                checkpoint=self._checkpoint_for(tenant, size), proof=proof, tree_size=size
            ),
            details={"leaf_index": req.leaf_index, "tree_size": size},
        )

    def audit_consistency(self, tenant: str, req: audit_pb2.ConsistencyProofRequest) -> Handled:
        current = self.audit.size(tenant)
        second = req.second_size or current
        if second > current or not 0 < req.first_size <= second:
            raise InvalidInput(f"no consistency proof from size {req.first_size} to {second}")
        proof = self.audit.consistency_proof(tenant, req.first_size, second)
        return Handled(
            audit_pb2.ConsistencyProofResponse(
                checkpoint=self._checkpoint_for(tenant, second), proof=proof, second_size=second
            ),
            details={"first_size": req.first_size, "second_size": second},
        )

    @contextlib.contextmanager
    def _exported(
        self, tenant: str, req: audit_pb2.ExportRequest
    ) -> Iterator[tuple[Path, ExportResult]]:
        """The tenant's export, written streaming to a temporary directory removed afterwards."""
        formats = {ExportFormat.JSONL}
        for name in req.formats:
            try:
                formats.add(ExportFormat(name))
            except ValueError as exc:
                raise InvalidInput(f"unknown export format {name!r} (jsonl, ocsf, csv)") from exc
        since = from_ms(req.since_ms) if req.since_ms else None
        until = from_ms(req.until_ms) if req.until_ms else None
        with tempfile.TemporaryDirectory(prefix="veil-export-") as tmp:
            out = Path(tmp) / "export"
            result = self.audit.export(
                tenant, out, since=since, until=until, start=req.from_index, fmt=formats
            )
            yield out, result

    @staticmethod
    def _export_details(req: audit_pb2.ExportRequest, result: ExportResult) -> dict[str, int]:
        return {
            "entries": result.entry_count,
            "tree_size": result.tree_size,
            "from_index": req.from_index,
        }

    def audit_export(self, tenant: str, req: audit_pb2.ExportRequest) -> Handled:
        """The export in one message, if it fits; otherwise ``TooLarge`` names the stream."""
        limit = self.config.max_message_bytes
        with self._exported(tenant, req) as (out, result):
            paths = [p for p in out.rglob("*") if p.is_file()]
            total = sum(p.stat().st_size for p in paths)
            if total > limit:
                raise TooLarge(
                    f"the export is {total} bytes, above the {limit}-byte message limit: "
                    "use ExportAuditStream (veil audit export streams)"
                )
            files = {p.relative_to(out).as_posix(): p.read_bytes() for p in paths}
        return Handled(
            audit_pb2.ExportResponse(files=files), details=self._export_details(req, result)
        )

    def audit_export_stream(
        self, opened: OpenedRequest, req: audit_pb2.ExportRequest, origin: str
    ) -> Iterator[common_pb2.SealedResponse]:
        """The export as sealed chunks of at most ``EXPORT_CHUNK_BYTES``, then its summary.

        Files are read a chunk at a time, so memory stays bounded whatever the log's size; the
        temporary directory goes when the stream ends, also when the caller goes away.
        """
        chunk_size = min(EXPORT_CHUNK_BYTES, self.config.max_message_bytes)
        seq = 0
        files: list[audit_pb2.ExportFile] = []
        with self._exported(opened.tenant, req) as (out, result):
            for path in sorted(p for p in out.rglob("*") if p.is_file()):
                name = path.relative_to(out).as_posix()
                digest = hashlib.sha256()
                size = 0
                with path.open("rb") as f:
                    while data := f.read(chunk_size):
                        digest.update(data)
                        chunk = audit_pb2.ExportChunk(name=name, offset=size, data=data)
                        message = audit_pb2.ExportStreamMessage(chunk=chunk)
                        yield self.progress(opened, message, seq=seq)
                        seq += 1
                        size += len(data)
                files.append(audit_pb2.ExportFile(name=name, size=size, sha256=digest.digest()))
        summary = audit_pb2.ExportSummary(
            files=files, tree_size=result.tree_size, entries=result.entry_count
        )
        handled = Handled(
            audit_pb2.ExportStreamMessage(summary=summary),
            details=self._export_details(req, result),
        )
        yield self.respond(opened, handled, event=EventType.AUDIT_EXPORT, origin=origin, seq=seq)
