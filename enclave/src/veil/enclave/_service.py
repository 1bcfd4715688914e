"""Thin gRPC servicers: decode, call the enclave, encode. Errors map in ``veil.enclave._status``.

Every sealed call goes through :meth:`_Servicer._sealed`: open (auth failures are recorded),
run, record the outcome durably in the audit log, answer with the log's receipt.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from veil.enclave._enclave import Enclave, UploadSession
from veil.enclave._gateway import OpenedRequest
from veil.enclave._handled import Handled
from veil.enclave._status import SealedFailure, grpc_errors, grpc_stream_errors
from veil.sdk.audit import EventType
from veil.sdk.errors import ProtocolError
from veil.sdk.protocol import Method
from veil.v1 import (
    attestation_pb2,
    attestation_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
    watermark_pb2,
    watermark_pb2_grpc,
)

__all__ = [
    "AttestationServicer",
    "AuditServicer",
    "InferenceServicer",
    "ModelServicer",
    "TrainingServicer",
    "WatermarkServicer",
]

M = TypeVar("M", bound=Message)
# Uploads complete one at a time: a whole upload is in memory only while it is checked and
# stored, so upload memory stays within max_concurrent_uploads x upload_memory_bytes + one.
_COMPLETING = threading.Lock()


def _parse(message: M, payload: bytes) -> M:
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise ProtocolError(f"sealed payload is not a valid {type(message).__name__}") from exc
    return message


def _sealed_stream(
    opened: OpenedRequest, messages: Iterator[common_pb2.SealedResponse]
) -> Iterator[common_pb2.SealedResponse]:
    """A sealed response stream whose failure is sealed as the message after those already out."""
    sent = 0
    try:
        for message in messages:
            yield message
            sent += 1
    except Exception as exc:
        raise SealedFailure(exc, opened, seq=sent) from exc


class _Servicer:
    def __init__(self, enclave: Enclave) -> None:
        self._enclave = enclave

    def _sealed(
        self,
        request: common_pb2.SealedRequest,
        context: grpc.ServicerContext,
        method: Method,
        event: EventType,
        handle: Callable[[OpenedRequest], Handled],
    ) -> common_pb2.SealedResponse:
        origin = context.peer()
        opened = self._enclave.open_request(request, method.value, origin)
        try:  # from here on the caller's response key is known: failures travel sealed
            try:
                handled = handle(opened)
            except Exception as exc:
                self._enclave.record_failure(opened, event, origin, exc)
                raise
            return self._enclave.respond(opened, handled, event=event, origin=origin)
        except Exception as exc:
            raise SealedFailure(exc, opened) from exc

    def _upload(
        self,
        request_iterator: Iterator[models_pb2.UploadMessage],
        context: grpc.ServicerContext,
        method: Method,
        event: EventType,
        begin: Callable[[OpenedRequest], UploadSession],
        finish: Callable[[UploadSession], Handled],
    ) -> common_pb2.SealedResponse:
        """A chunked upload: a sealed header first, then encrypted chunks in order."""
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "header":
            raise ProtocolError("upload must start with a sealed header")

        def upload(opened: OpenedRequest) -> Handled:
            session = begin(opened)
            try:
                for message in request_iterator:
                    if message.WhichOneof("kind") != "chunk":
                        raise ProtocolError("only chunks may follow the upload header")
                    self._enclave.add_chunk(session, message.chunk)
                with _COMPLETING:
                    return finish(session)
            finally:  # whatever happened, nothing of the upload stays in memory or on disk
                session.close()

        return self._sealed(first.header, context, method, event, upload)


class AttestationServicer(_Servicer, attestation_pb2_grpc.AttestationServiceServicer):
    @grpc_errors
    def GetAttestation(
        self, request: attestation_pb2.AttestationRequest, context: grpc.ServicerContext
    ) -> attestation_pb2.AttestationEvidence:
        return self._enclave.attestation(request.nonce, context.peer()).to_proto()


class ModelServicer(_Servicer, models_pb2_grpc.ModelServiceServicer):
    @grpc_errors
    def UploadModel(
        self, request_iterator: Iterator[models_pb2.UploadMessage], context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        return self._upload(
            request_iterator,
            context,
            Method.UPLOAD_MODEL,
            EventType.MODEL_REGISTERED,
            self._enclave.begin_upload,
            self._enclave.finish_upload,
        )

    @grpc_errors
    def ListModels(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        def run(opened: OpenedRequest) -> Handled:
            _parse(models_pb2.ListModelsRequest(), opened.payload)
            return self._enclave.list_models(opened.tenant)

        return self._sealed(request, context, Method.LIST_MODELS, EventType.MODEL_LISTED, run)

    @grpc_errors
    def DeleteModel(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        def run(opened: OpenedRequest) -> Handled:
            req = _parse(models_pb2.DeleteModelRequest(), opened.payload)
            return self._enclave.delete_model(opened.tenant, req.model)

        return self._sealed(request, context, Method.DELETE_MODEL, EventType.MODEL_DELETED, run)


class InferenceServicer(_Servicer, inference_pb2_grpc.InferenceServiceServicer):
    @grpc_errors
    def Infer(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        def run(opened: OpenedRequest) -> Handled:
            req = _parse(inference_pb2.InferRequest(), opened.payload)
            return self._enclave.infer(opened.tenant, req)

        return self._sealed(request, context, Method.INFER, EventType.INFERENCE, run)


class AuditServicer(_Servicer, audit_pb2_grpc.AuditServiceServicer):
    @grpc_errors
    def GetCheckpoint(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        def run(opened: OpenedRequest) -> Handled:
            _parse(audit_pb2.CheckpointRequest(), opened.payload)
            return self._enclave.audit_checkpoint(opened.tenant)

        return self._sealed(request, context, Method.AUDIT_CHECKPOINT, EventType.AUDIT_READ, run)

    @grpc_errors
    def GetInclusionProof(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        def run(opened: OpenedRequest) -> Handled:
            req = _parse(audit_pb2.InclusionProofRequest(), opened.payload)
            return self._enclave.audit_inclusion(opened.tenant, req)

        return self._sealed(request, context, Method.AUDIT_INCLUSION, EventType.AUDIT_READ, run)

    @grpc_errors
    def GetConsistencyProof(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        def run(opened: OpenedRequest) -> Handled:
            req = _parse(audit_pb2.ConsistencyProofRequest(), opened.payload)
            return self._enclave.audit_consistency(opened.tenant, req)

        return self._sealed(request, context, Method.AUDIT_CONSISTENCY, EventType.AUDIT_READ, run)

    @grpc_errors
    def ExportAudit(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        def run(opened: OpenedRequest) -> Handled:
            req = _parse(audit_pb2.ExportRequest(), opened.payload)
            return self._enclave.audit_export(opened.tenant, req)

        return self._sealed(request, context, Method.AUDIT_EXPORT, EventType.AUDIT_EXPORT, run)

    @grpc_stream_errors
    def ExportAuditStream(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.SealedResponse]:
        """Any size: sealed, numbered chunks of the export's files, then a receipted summary."""
        origin = context.peer()
        opened = self._enclave.open_request(request, Method.AUDIT_EXPORT_STREAM.value, origin)

        def export() -> Iterator[common_pb2.SealedResponse]:
            try:
                req = _parse(audit_pb2.ExportRequest(), opened.payload)
                yield from self._enclave.audit_export_stream(opened, req, origin)
            except Exception as exc:
                self._enclave.record_failure(opened, EventType.AUDIT_EXPORT, origin, exc)
                raise

        return _sealed_stream(opened, export())


class TrainingServicer(_Servicer, training_pb2_grpc.TrainingServiceServicer):
    @grpc_errors
    def UploadDataset(
        self, request_iterator: Iterator[models_pb2.UploadMessage], context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        return self._upload(
            request_iterator,
            context,
            Method.UPLOAD_DATASET,
            EventType.DATASET_UPLOADED,
            self._enclave.begin_dataset_upload,
            self._enclave.finish_dataset_upload,
        )

    @grpc_errors
    def GetBudget(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        def run(opened: OpenedRequest) -> Handled:
            req = _parse(training_pb2.BudgetRequest(), opened.payload)
            return self._enclave.training.budget(opened.tenant, req)

        return self._sealed(request, context, Method.GET_BUDGET, EventType.BUDGET_READ, run)

    @grpc_stream_errors
    def Train(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.SealedResponse]:
        """Stream sealed progress while the job runs on a worker thread, then the result."""
        origin = context.peer()
        opened = self._enclave.open_request(request, Method.TRAIN.value, origin)
        return _sealed_stream(opened, self._train(opened, origin, context))

    def _train(
        self, opened: OpenedRequest, origin: str, context: grpc.ServicerContext
    ) -> Iterator[common_pb2.SealedResponse]:
        req = _parse(training_pb2.TrainRequest(), opened.payload)
        events: queue.Queue[training_pb2.TrainProgress | Handled | BaseException] = queue.Queue()

        ended = threading.Event()  # the stream ended before the job did

        def emit(progress: training_pb2.TrainProgress) -> None:
            if ended.is_set() or not context.is_active():
                raise ProtocolError("client went away")  # aborts the job; unused steps refunded
            events.put(progress)

        def work() -> None:
            try:
                events.put(
                    self._enclave.training.train(opened.tenant, opened.key_id, origin, req, emit)
                )
            except BaseException as exc:  # handed to the streaming thread, which maps it
                events.put(exc)

        worker = threading.Thread(target=work, name="veil-train", daemon=True)
        worker.start()
        seq = 0
        try:
            while True:
                item = events.get()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Handled):
                    yield self._enclave.respond(
                        opened, item, event=EventType.TRAINING_FINISHED, origin=origin, seq=seq
                    )
                    return
                yield self._enclave.progress(
                    opened, training_pb2.TrainEvent(progress=item), seq=seq
                )
                seq += 1
        finally:  # the call (and its training slot) lasts until the job has stopped
            ended.set()
            worker.join()


class WatermarkServicer(_Servicer, watermark_pb2_grpc.WatermarkServiceServicer):
    @grpc_errors
    def EmbedWatermark(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        def run(opened: OpenedRequest) -> Handled:
            req = _parse(watermark_pb2.EmbedWatermarkRequest(), opened.payload)
            return self._enclave.watermarks.embed(opened.tenant, req)

        return self._sealed(
            request, context, Method.EMBED_WATERMARK, EventType.WATERMARK_EMBEDDED, run
        )

    @grpc_errors
    def VerifyWatermark(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        def run(opened: OpenedRequest) -> Handled:
            req = _parse(watermark_pb2.VerifyWatermarkRequest(), opened.payload)
            return self._enclave.watermarks.verify(opened.tenant, req)

        return self._sealed(
            request, context, Method.VERIFY_WATERMARK, EventType.WATERMARK_VERIFIED, run
        )
