"""Thin gRPC servicers: decode, call the enclave, encode. Errors map in ``enclave._status``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from enclave._enclave import Enclave, model_info
from enclave._status import grpc_errors
from protos.veil.v1 import (
    attestation_pb2,
    attestation_pb2_grpc,
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from sdk._errors import ProtocolError
from sdk._protocol import Method

__all__ = ["AttestationServicer", "InferenceServicer", "ModelServicer"]


M = TypeVar("M", bound=Message)


def _parse(message: M, payload: bytes) -> M:
    try:
        message.ParseFromString(payload)
    except DecodeError as exc:
        raise ProtocolError(f"sealed payload is not a valid {type(message).__name__}") from exc
    return message


class AttestationServicer(attestation_pb2_grpc.AttestationServiceServicer):
    def __init__(self, enclave: Enclave) -> None:
        self._enclave = enclave

    @grpc_errors
    def GetAttestation(
        self, request: attestation_pb2.AttestationRequest, context: grpc.ServicerContext
    ) -> attestation_pb2.AttestationEvidence:
        return self._enclave.attestation(request.nonce).to_proto()


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, enclave: Enclave) -> None:
        self._enclave = enclave

    @grpc_errors
    def UploadModel(
        self, request_iterator: Iterator[models_pb2.UploadMessage], context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "header":
            raise ProtocolError("upload must start with a sealed header")
        opened = self._enclave.gateway.open(first.header, Method.UPLOAD_MODEL.value)
        upload = self._enclave.begin_upload(opened)
        for message in request_iterator:
            if message.WhichOneof("kind") != "chunk":
                raise ProtocolError("only chunks may follow the upload header")
            self._enclave.add_chunk(upload, message.chunk)
        record = self._enclave.finish_upload(upload)
        return self._enclave.gateway.respond(opened, model_info(record))

    @grpc_errors
    def ListModels(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        opened = self._enclave.gateway.open(request, Method.LIST_MODELS.value)
        _parse(models_pb2.ListModelsRequest(), opened.payload)
        records = self._enclave.list_models(opened.tenant)
        response = models_pb2.ListModelsResponse(models=[model_info(r) for r in records])
        return self._enclave.gateway.respond(opened, response)

    @grpc_errors
    def DeleteModel(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        opened = self._enclave.gateway.open(request, Method.DELETE_MODEL.value)
        req = _parse(models_pb2.DeleteModelRequest(), opened.payload)
        records = self._enclave.delete_model(opened.tenant, req.model)
        response = models_pb2.ListModelsResponse(models=[model_info(r) for r in records])
        return self._enclave.gateway.respond(opened, response)


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    def __init__(self, enclave: Enclave) -> None:
        self._enclave = enclave

    @grpc_errors
    def Infer(
        self, request: common_pb2.SealedRequest, context: grpc.ServicerContext
    ) -> common_pb2.SealedResponse:
        opened = self._enclave.gateway.open(request, Method.INFER.value)
        req = _parse(inference_pb2.InferRequest(), opened.payload)
        response = self._enclave.infer(opened.tenant, req)
        return self._enclave.gateway.respond(opened, response)
