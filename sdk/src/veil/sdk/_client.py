"""``Client`` (blocking) and ``AsyncClient`` (asyncio) over one shared ``ClientCore``.

Both verify the enclave's attestation before the first byte of data is sent, cache the verdict
until it expires, and re-attest once when the enclave says its key rotated.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message
from tqdm import tqdm

from veil.sdk._audit_client import (
    ExportReceiver,
    checked_checkpoint,
    checked_consistency,
    checked_inclusion,
)
from veil.sdk._core import ClientCore, TlsOptions, _utcnow, remote_error
from veil.sdk._models import ModelInfo, WatermarkCheck, WatermarkEmbedding
from veil.sdk._training import (
    BudgetInfo,
    DatasetInfo,
    TrainingOutcome,
    TrainingProgress,
    outcome_from_result,
)
from veil.sdk.attestation._policy import AttestationPolicy
from veil.sdk.audit import Checkpoint, Receipt
from veil.sdk.errors import ProtocolError, RemoteError
from veil.sdk.evidence import AttestedEnclave, to_ms
from veil.sdk.protocol import Method, Suite
from veil.sdk.sealing import SealedCall
from veil.v1 import (
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

__all__ = ["AsyncClient", "Client"]

T = TypeVar("T")
M = TypeVar("M", bound=Message)
ModelSource = str | Path | bytes


def _key_file(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A key file or opening (path, JSON text or mapping) as a dict."""
    if isinstance(source, Mapping):
        return dict(source)
    text = (
        Path(source).read_text()
        if isinstance(source, Path) or not source.lstrip().startswith("{")
        else source
    )
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("watermark key file must be a JSON object")
    return doc


def _read_model(source: ModelSource) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


class _Base:
    def __init__(
        self,
        target: str,
        *,
        api_key: str,
        policy: AttestationPolicy,
        tenant: str = "default",
        suite: Suite = Suite.X25519_SHA256_AES256GCM,
        tls: TlsOptions | None = None,
        timeout: float = 60.0,
        progress: bool = False,
        chunk_size: int = 1024 * 1024,
        max_message_bytes: int = 65 * 1024 * 1024,
        clock: Callable[[], datetime] = _utcnow,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is required")
        self._target = target
        self._tls = tls
        self._timeout = timeout
        self._progress = progress
        self._options = _channel_options(max_message_bytes)
        self._core = ClientCore(
            tenant=tenant,
            api_key=api_key,
            policy=policy,
            suite=suite,
            clock=clock,
            random=random,
            chunk_size=chunk_size,
        )
        self._connect()

    def _connect(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target!r}, tenant={self._core.tenant!r})"

    @property
    def receipts(self) -> list[Receipt]:
        """Receipts for this client's calls, each verified on arrival (newest last)."""
        return [receipt for receipt, _ in self._core.receipts]

    @staticmethod
    def _dataset_format(source: ModelSource, fmt: str | None) -> str:
        if fmt is not None:
            return fmt
        if isinstance(source, bytes):
            raise ValueError("format is required when the dataset is given as bytes")
        suffix = Path(source).suffix.lower().lstrip(".")
        if suffix not in ("npz", "csv", "parquet"):
            raise ValueError(f"cannot tell the dataset format of {source}; pass format=")
        return suffix

    @staticmethod
    def _train_request(
        dataset: str | DatasetInfo,
        model: str,
        *,
        target_epsilon: float,
        delta: float,
        max_grad_norm: float,
        epochs: int,
        batch_size: int,
        learning_rate: float,
        name: str,
        accountant: str,
        optimizer: str,
        noise: str,
        seed: int,
        spec: Mapping[str, Any] | None,
    ) -> training_pb2.TrainRequest:
        extra = dict(spec or {})
        return training_pb2.TrainRequest(
            dataset_sha256=dataset.sha256 if isinstance(dataset, DatasetInfo) else dataset,
            model_kind=model,
            hidden=[int(h) for h in extra.pop("hidden", ())],
            channels=[int(c) for c in extra.pop("channels", ())],
            activation=str(extra.pop("activation", "")),
            norm=str(extra.pop("norm", "")),
            target_epsilon=target_epsilon,
            delta=delta,
            max_grad_norm=max_grad_norm,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            optimizer=optimizer,
            accountant=accountant,
            noise=noise,
            seed=seed,
            model_name=name,
            input_shape=[int(d) for d in extra.pop("input_shape", ())],
        )

    @staticmethod
    def _export_request(
        since: datetime | int | None, until: datetime | None, formats: Sequence[str]
    ) -> audit_pb2.ExportRequest:
        """``since``: a time, or a leaf index (e.g. an earlier export's tree size)."""
        if isinstance(since, int) and since < 0:
            raise ValueError("since must be a time or a leaf index >= 0")
        return audit_pb2.ExportRequest(
            since_ms=to_ms(since) if isinstance(since, datetime) else 0,
            until_ms=to_ms(until) if until else 0,
            formats=list(formats),
            from_index=since if isinstance(since, int) else 0,
        )

    def _bar(self, total: int, name: str) -> tqdm[None]:
        return tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=f"uploading {name}",
            disable=not self._progress,
            leave=False,
        )


class Client(_Base):
    """Blocking client. Use as a context manager::

    policy = AttestationPolicy.production(measurements=[EXPECTED])
    with Client("enclave:7443", api_key=key, policy=policy) as client:
        client.upload_model("model.onnx", name="scorer")
        result = client.infer("scorer", {"x": batch})
    """

    def _connect(self) -> None:
        if self._tls is not None:
            self._channel = grpc.secure_channel(
                self._target, self._tls.credentials(), self._options
            )
        else:
            self._channel = grpc.insecure_channel(self._target, self._options)
        self._attestation = attestation_pb2_grpc.AttestationServiceStub(self._channel)
        self._models = models_pb2_grpc.ModelServiceStub(self._channel)
        self._inference = inference_pb2_grpc.InferenceServiceStub(self._channel)
        self._audit = audit_pb2_grpc.AuditServiceStub(self._channel)
        self._training = training_pb2_grpc.TrainingServiceStub(self._channel)
        self._watermark = watermark_pb2_grpc.WatermarkServiceStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def attest(self, *, force: bool = False) -> AttestedEnclave:
        """Verify the enclave (or return the cached, unexpired verdict). Raises on failure."""
        if not force and (cached := self._core.cached()) is not None:
            return cached
        challenge = self._core.challenge()
        try:
            evidence = self._attestation.GetAttestation(challenge.request(), timeout=self._timeout)
        except grpc.RpcError as exc:
            raise remote_error(exc) from exc
        return self._core.accept(challenge, evidence)

    def _sealed(self, call: Callable[[AttestedEnclave], T]) -> T:
        """Run ``call`` with a verified enclave; on ``key-rotated``, re-attest and retry once."""
        try:
            return call(self.attest())
        except RemoteError as exc:
            if exc.reason != "key-rotated":
                raise
            self._core.invalidate()
            return call(self.attest(force=True))

    def _unary(
        self,
        method: Method,
        stub: Callable[..., common_pb2.SealedResponse],
        request: Message,
        response: M,
    ) -> M:
        def run(enclave: AttestedEnclave) -> M:
            sealed = self._core.seal(enclave, method, request)
            try:
                answer = stub(sealed.request, timeout=self._timeout)
            except grpc.RpcError as exc:
                raise remote_error(exc, sealed) from exc
            return self._core.open(enclave, sealed, answer, type(response)())

        return self._sealed(run)

    def _stream_upload(
        self,
        size: int,
        label: str,
        prepare: Callable[
            [AttestedEnclave, Callable[[int], object]],
            tuple[SealedCall, Iterator[models_pb2.UploadMessage]],
        ],
        stub: Callable[..., common_pb2.SealedResponse],
        response: M,
    ) -> M:
        """Seal a header, stream encrypted chunks (with a progress bar), open the answer."""

        def run(enclave: AttestedEnclave) -> M:
            with self._bar(size, label) as bar:
                sealed, messages = prepare(enclave, bar.update)
                try:
                    answer = stub(messages, timeout=self._timeout)
                except grpc.RpcError as exc:
                    raise remote_error(exc, sealed) from exc
            return self._core.open(enclave, sealed, answer, type(response)())

        return self._sealed(run)

    def upload_model(self, model: ModelSource, name: str) -> ModelInfo:
        """Encrypt and stream an ONNX model to the enclave; return the registered version."""
        data = _read_model(model)
        info = self._stream_upload(
            len(data),
            name,
            lambda enclave, progress: self._core.upload(enclave, data, name, progress),
            self._models.UploadModel,
            models_pb2.ModelInfo(),
        )
        return ModelInfo.from_proto(info)

    def list_models(self) -> list[ModelInfo]:
        """This tenant's registered models, every version."""
        response = self._unary(
            Method.LIST_MODELS,
            self._models.ListModels,
            models_pb2.ListModelsRequest(),
            models_pb2.ListModelsResponse(),
        )
        return ClientCore.model_infos(response)

    def delete_model(self, model: str) -> list[ModelInfo]:
        """Delete ``name@version``, or every version of ``name``; return what was deleted."""
        response = self._unary(
            Method.DELETE_MODEL,
            self._models.DeleteModel,
            models_pb2.DeleteModelRequest(model=model),
            models_pb2.ListModelsResponse(),
        )
        return ClientCore.model_infos(response)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        output_names: Sequence[str] | None = None,
    ) -> dict[str, npt.NDArray[np.generic]]:
        """Run ``model`` (``name`` or ``name@version``) on ``inputs``; sealed both ways."""
        request = ClientCore.infer_request(model, inputs, output_names)
        response = self._unary(
            Method.INFER, self._inference.Infer, request, inference_pb2.InferResponse()
        )
        return ClientCore.infer_result(response)

    # -- audit log ------------------------------------------------------------------------

    def audit_checkpoint(self) -> Checkpoint:
        """This tenant's latest checkpoint, verified under the attested log key."""
        response = self._unary(
            Method.AUDIT_CHECKPOINT,
            self._audit.GetCheckpoint,
            audit_pb2.CheckpointRequest(),
            audit_pb2.CheckpointResponse(),
        )
        return checked_checkpoint(self.attest(), self._core.tenant, response)

    def prove_receipt(self, receipt: Receipt) -> Checkpoint:
        """Prove a receipt's record is in the log's current signed tree; return that tree."""
        response = self._unary(
            Method.AUDIT_INCLUSION,
            self._audit.GetInclusionProof,
            audit_pb2.InclusionProofRequest(leaf_index=receipt.leaf_index),
            audit_pb2.InclusionProofResponse(),
        )
        return checked_inclusion(self.attest(), receipt, response)

    def audit_consistency(self, old: Checkpoint) -> Checkpoint:
        """Prove the log only grew since ``old``; return the newer checkpoint."""
        response = self._unary(
            Method.AUDIT_CONSISTENCY,
            self._audit.GetConsistencyProof,
            audit_pb2.ConsistencyProofRequest(first_size=old.size),
            audit_pb2.ConsistencyProofResponse(),
        )
        return checked_consistency(self.attest(), old, response)

    def export_audit(
        self,
        out_dir: str | Path,
        *,
        since: datetime | int | None = None,
        until: datetime | None = None,
        formats: Sequence[str] = (),
    ) -> Path:
        """Export this tenant's log to ``out_dir`` with the evidence that binds its key.

        Streamed (``ExportAuditStream``): any size, files written as chunks arrive. ``since``
        is a time or a leaf index; an index (say the tree size of an earlier export) exports
        only the records from it on, each with an inclusion proof into the current checkpoint.
        """
        request = self._export_request(since, until, formats)

        def run(enclave: AttestedEnclave) -> Path:
            sealed = self._core.seal(enclave, Method.AUDIT_EXPORT_STREAM, request)
            receiver = ExportReceiver(Path(out_dir))
            received = 0
            try:
                stream = self._audit.ExportAuditStream(sealed.request, timeout=self._timeout)
                for seq, message in enumerate(stream):
                    received = seq + 1
                    part = self._core.open(
                        enclave,
                        sealed,
                        message,
                        audit_pb2.ExportStreamMessage(),
                        seq=seq,
                        stream=True,
                    )
                    receiver.add(part, final=message.final)
                return receiver.finish(enclave)
            except grpc.RpcError as exc:
                receiver.abort()
                raise remote_error(exc, sealed, seq=received) from exc
            except BaseException:
                receiver.abort()
                raise

        return self._sealed(run)

    # -- watermarking -------------------------------------------------------------------

    def embed_watermark(
        self,
        model: str,
        key: str | Path | Mapping[str, Any],
        dataset: str | DatasetInfo,
        *,
        epochs: int = 30,
    ) -> WatermarkEmbedding:
        """Mark a registered model with the owner's key (``veil watermark keygen`` KEY.json),
        fine-tuning on an uploaded dataset; the result is registered as a new version."""
        doc = _key_file(key)
        try:
            owner = bytes.fromhex(str(doc["owner_private_key"]))
            secret = json.dumps(doc["watermark"])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"watermark key file is malformed: {exc}") from exc
        response = self._unary(
            Method.EMBED_WATERMARK,
            self._watermark.EmbedWatermark,
            watermark_pb2.EmbedWatermarkRequest(
                model=model,
                owner_private_key=owner,
                watermark_key_json=secret,
                dataset_sha256=dataset.sha256 if isinstance(dataset, DatasetInfo) else dataset,
                epochs=epochs,
            ),
            watermark_pb2.EmbedWatermarkResponse(),
        )
        return WatermarkEmbedding(
            model=ModelInfo.from_proto(response.model),
            claim_json=response.claim_json,
            p_value=response.p_value,
            matches=response.matches,
            n_bits=response.n_bits,
            accuracy_before=response.accuracy_before,
            accuracy_after=response.accuracy_after,
        )

    def verify_watermark(
        self,
        model: str,
        claim_json: str,
        opening: str | Path | Mapping[str, Any],
        *,
        threshold: float = 1e-9,
    ) -> WatermarkCheck:
        """Check a claimed watermark on a registered model; the opening reveals the key."""
        doc = _key_file(opening)
        response = self._unary(
            Method.VERIFY_WATERMARK,
            self._watermark.VerifyWatermark,
            watermark_pb2.VerifyWatermarkRequest(
                model=model,
                claim_json=claim_json,
                opening_json=json.dumps(doc.get("watermark", doc)),
                threshold=threshold,
            ),
            watermark_pb2.VerifyWatermarkResponse(),
        )
        return WatermarkCheck(
            detected=response.detected,
            p_value=response.p_value,
            matches=response.matches,
            n_bits=response.n_bits,
            threshold=response.threshold,
            model_sha256=response.model_sha256,
            claim_sha256=response.claim_sha256,
        )

    # -- training -------------------------------------------------------------------------

    def upload_dataset(
        self, data: ModelSource, *, format: str | None = None, label_column: str = ""
    ) -> DatasetInfo:
        """Encrypt and stream a dataset (.npz with x and y, CSV or Parquet) to the enclave."""
        raw = _read_model(data)
        fmt = self._dataset_format(data, format)
        info = self._stream_upload(
            len(raw),
            "dataset",
            lambda enclave, progress: self._core.upload_dataset(
                enclave, raw, fmt, label_column, progress
            ),
            self._training.UploadDataset,
            training_pb2.DatasetInfo(),
        )
        return DatasetInfo.from_proto(info)

    def budget(self, dataset: str | DatasetInfo) -> BudgetInfo:
        """The privacy budget of a dataset: what it had, what is spent, what is left."""
        digest = dataset.sha256 if isinstance(dataset, DatasetInfo) else dataset
        response = self._unary(
            Method.GET_BUDGET,
            self._training.GetBudget,
            training_pb2.BudgetRequest(dataset_sha256=digest),
            training_pb2.BudgetResponse(),
        )
        return BudgetInfo.from_proto(response)

    def train(
        self,
        dataset: str | DatasetInfo,
        model: str = "mlp",
        *,
        target_epsilon: float,
        delta: float = 1e-6,
        max_grad_norm: float = 1.0,
        epochs: int = 5,
        batch_size: int = 64,
        learning_rate: float = 0.5,
        name: str = "trained",
        accountant: str = "prv",
        optimizer: str = "sgd",
        noise: str = "secure",
        seed: int = 0,
        spec: Mapping[str, Any] | None = None,
    ) -> TrainingJob:
        """Start a DP-SGD job on an uploaded dataset; iterate ``job.stream()`` for progress."""
        request = self._train_request(
            dataset,
            model,
            target_epsilon=target_epsilon,
            delta=delta,
            max_grad_norm=max_grad_norm,
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            name=name,
            accountant=accountant,
            optimizer=optimizer,
            noise=noise,
            seed=seed,
            spec=spec,
        )
        enclave = self.attest()
        sealed = self._core.seal(enclave, Method.TRAIN, request)
        try:
            stream = self._training.Train(sealed.request, timeout=None)
        except grpc.RpcError as exc:
            raise remote_error(exc, sealed) from exc
        return TrainingJob(self._core, enclave, sealed, stream, progress=self._progress)


class TrainingJob:
    """A running training job: ``stream()`` yields progress and finally the outcome."""

    def __init__(
        self,
        core: ClientCore,
        enclave: AttestedEnclave,
        call: SealedCall,
        stream: Iterator[common_pb2.SealedResponse],
        *,
        progress: bool,
    ) -> None:
        self._core = core
        self._enclave = enclave
        self._call = call
        self._stream = stream
        self._bar = progress
        self._outcome: TrainingOutcome | None = None

    def stream(self) -> Iterator[TrainingProgress | TrainingOutcome]:
        """Progress events in order (each sealed and checked), then the certified outcome."""
        if self._outcome is not None:
            yield self._outcome
            return
        bar = tqdm(total=None, desc="training", disable=not self._bar, leave=False)
        received = 0
        try:
            for seq, sealed in enumerate(self._stream):
                received = seq + 1
                event = self._core.open(
                    self._enclave,
                    self._call,
                    sealed,
                    training_pb2.TrainEvent(),
                    seq=seq,
                    stream=True,
                )
                if event.HasField("progress"):
                    p = event.progress
                    bar.total = p.total_steps
                    bar.n = p.step
                    bar.set_postfix(epsilon=f"{p.epsilon:.3f}", loss=f"{p.loss:.4f}")
                    yield TrainingProgress(p.epoch, p.step, p.total_steps, p.loss, p.epsilon)
                    continue
                if not sealed.final:
                    raise ProtocolError("training result arrived before the end of the stream")
                self._outcome = outcome_from_result(event.result, self._enclave)
                yield self._outcome
                return
        except grpc.RpcError as exc:
            raise remote_error(exc, self._call, seq=received) from exc
        finally:
            bar.close()
        raise ProtocolError("training stream ended without a result")

    def result(self) -> TrainingOutcome:
        """Wait for the job to finish; return the registered model and its certified record."""
        for item in self.stream():
            if isinstance(item, TrainingOutcome):
                return item
        raise ProtocolError("training stream ended without a result")


class AsyncClient(_Base):
    """asyncio client with the same behaviour as :class:`Client`::

    async with AsyncClient(target, api_key=key, policy=policy) as client:
        out = await client.infer("scorer", {"x": batch})
    """

    def _connect(self) -> None:
        if self._tls is not None:
            self._aio_channel = grpc.aio.secure_channel(
                self._target, self._tls.credentials(), self._options
            )
        else:
            self._aio_channel = grpc.aio.insecure_channel(self._target, self._options)
        self._attestation = attestation_pb2_grpc.AttestationServiceStub(self._aio_channel)
        self._models = models_pb2_grpc.ModelServiceStub(self._aio_channel)
        self._inference = inference_pb2_grpc.InferenceServiceStub(self._aio_channel)
        self._audit = audit_pb2_grpc.AuditServiceStub(self._aio_channel)
        self._training = training_pb2_grpc.TrainingServiceStub(self._aio_channel)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._aio_channel.close()

    async def attest(self, *, force: bool = False) -> AttestedEnclave:
        if not force and (cached := self._core.cached()) is not None:
            return cached
        challenge = self._core.challenge()
        try:
            evidence = await self._attestation.GetAttestation(
                challenge.request(), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise remote_error(exc) from exc
        return self._core.accept(challenge, evidence)

    async def _sealed(self, call: Callable[[AttestedEnclave], Awaitable[T]]) -> T:
        try:
            return await call(await self.attest())
        except RemoteError as exc:
            if exc.reason != "key-rotated":
                raise
            self._core.invalidate()
            return await call(await self.attest(force=True))

    async def _unary(
        self, method: Method, stub: Callable[..., Any], request: Message, response: M
    ) -> M:
        async def run(enclave: AttestedEnclave) -> M:
            sealed: SealedCall = self._core.seal(enclave, method, request)
            try:
                answer = await stub(sealed.request, timeout=self._timeout)
            except grpc.RpcError as exc:
                raise remote_error(exc, sealed) from exc
            return self._core.open(enclave, sealed, answer, type(response)())

        return await self._sealed(run)

    async def upload_model(self, model: ModelSource, name: str) -> ModelInfo:
        data = _read_model(model)

        async def run(enclave: AttestedEnclave) -> ModelInfo:
            with self._bar(len(data), name) as bar:
                sealed, messages = self._core.upload(enclave, data, name, bar.update)

                async def stream() -> AsyncIterator[models_pb2.UploadMessage]:
                    for message in messages:
                        yield message

                try:
                    answer = await self._models.UploadModel(stream(), timeout=self._timeout)
                except grpc.RpcError as exc:
                    raise remote_error(exc, sealed) from exc
            return ModelInfo.from_proto(
                self._core.open(enclave, sealed, answer, models_pb2.ModelInfo())
            )

        return await self._sealed(run)

    async def list_models(self) -> list[ModelInfo]:
        response = await self._unary(
            Method.LIST_MODELS,
            self._models.ListModels,
            models_pb2.ListModelsRequest(),
            models_pb2.ListModelsResponse(),
        )
        return ClientCore.model_infos(response)

    async def delete_model(self, model: str) -> list[ModelInfo]:
        response = await self._unary(
            Method.DELETE_MODEL,
            self._models.DeleteModel,
            models_pb2.DeleteModelRequest(model=model),
            models_pb2.ListModelsResponse(),
        )
        return ClientCore.model_infos(response)

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        output_names: Sequence[str] | None = None,
    ) -> dict[str, npt.NDArray[np.generic]]:
        request = ClientCore.infer_request(model, inputs, output_names)
        response = await self._unary(
            Method.INFER, self._inference.Infer, request, inference_pb2.InferResponse()
        )
        return ClientCore.infer_result(response)

    async def audit_checkpoint(self) -> Checkpoint:
        response = await self._unary(
            Method.AUDIT_CHECKPOINT,
            self._audit.GetCheckpoint,
            audit_pb2.CheckpointRequest(),
            audit_pb2.CheckpointResponse(),
        )
        return checked_checkpoint(await self.attest(), self._core.tenant, response)

    async def prove_receipt(self, receipt: Receipt) -> Checkpoint:
        response = await self._unary(
            Method.AUDIT_INCLUSION,
            self._audit.GetInclusionProof,
            audit_pb2.InclusionProofRequest(leaf_index=receipt.leaf_index),
            audit_pb2.InclusionProofResponse(),
        )
        return checked_inclusion(await self.attest(), receipt, response)

    async def export_audit(
        self,
        out_dir: str | Path,
        *,
        since: datetime | int | None = None,
        until: datetime | None = None,
        formats: Sequence[str] = (),
    ) -> Path:
        request = self._export_request(since, until, formats)

        async def run(enclave: AttestedEnclave) -> Path:
            sealed = self._core.seal(enclave, Method.AUDIT_EXPORT_STREAM, request)
            receiver = ExportReceiver(Path(out_dir))
            seq = 0
            try:
                stream = self._audit.ExportAuditStream(sealed.request, timeout=self._timeout)
                async for message in stream:
                    part = self._core.open(
                        enclave,
                        sealed,
                        message,
                        audit_pb2.ExportStreamMessage(),
                        seq=seq,
                        stream=True,
                    )
                    seq += 1
                    receiver.add(part, final=message.final)
                return receiver.finish(enclave)
            except grpc.RpcError as exc:
                receiver.abort()
                raise remote_error(exc, sealed, seq=seq) from exc
            except BaseException:
                receiver.abort()
                raise

        return await self._sealed(run)
