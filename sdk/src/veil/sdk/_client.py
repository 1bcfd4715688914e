"""``Client`` (blocking) and ``AsyncClient`` (asyncio): two drivers of the same operations.

Every operation is written once, in :mod:`veil.sdk._operations`, as a generator of channel
steps; ``Client`` runs the steps blocking, ``AsyncClient`` awaits them. Both verify the enclave's
attestation before the first byte of data is sent, cache the verdict until it expires, and
re-attest once when the enclave says its key rotated. Their public methods have the same names
and parameters (a test compares them); the async ones are coroutines.
"""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message

from veil.sdk._core import ClientCore, TlsOptions, _utcnow
from veil.sdk._models import ModelInfo, WatermarkCheck, WatermarkEmbedding
from veil.sdk._operations import (
    END,
    STREAMING_REQUEST,
    STREAMING_RESPONSE,
    Call,
    Emit,
    Next,
    Op,
    Operations,
    Source,
    Step,
    TrainingStart,
    read_api_key,
    training_watermark,
)
from veil.sdk._training import (
    BudgetInfo,
    DatasetInfo,
    TrainingOutcome,
    TrainingProgress,
)
from veil.sdk.attestation._policy import AttestationPolicy
from veil.sdk.audit import Checkpoint, Receipt
from veil.sdk.errors import ConfigError, ConfigFailure, ProtocolError, ProtocolFailure
from veil.sdk.evidence import AttestedEnclave
from veil.sdk.protocol import Method, Suite
from veil.sdk.replicas import ReplicaIdentity
from veil.v1 import (
    attestation_pb2_grpc,
    audit_pb2_grpc,
    common_pb2,
    inference_pb2_grpc,
    models_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
    watermark_pb2_grpc,
)

__all__ = ["AsyncClient", "AsyncTrainingJob", "Client", "TrainingJob"]

T = TypeVar("T")
M = TypeVar("M", bound=Message)
KeySource = str | os.PathLike[str] | Mapping[str, Any]

_STUBS: Mapping[str, Callable[[Any], object]] = {
    "AttestationService": attestation_pb2_grpc.AttestationServiceStub,
    "ModelService": models_pb2_grpc.ModelServiceStub,
    "InferenceService": inference_pb2_grpc.InferenceServiceStub,
    "AuditService": audit_pb2_grpc.AuditServiceStub,
    "TrainingService": training_pb2_grpc.TrainingServiceStub,
    "WatermarkService": watermark_pb2_grpc.WatermarkServiceStub,
}


def _methods(channel: grpc.Channel | grpc.aio.Channel) -> dict[str, Any]:
    """Every RPC of Veil's services on ``channel``, by full method name."""
    return {
        f"/veil.v1.{service}/{name}": method
        for service, stub in _STUBS.items()
        for name, method in vars(stub(channel)).items()
    }


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def _train_request(
    dataset: str | DatasetInfo,
    model: str,
    *,
    target_epsilon: float,
    delta: float | None,
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
    watermark: training_pb2.TrainingWatermark | None = None,
) -> training_pb2.TrainRequest:
    extra = dict(spec or {})
    try:
        return training_pb2.TrainRequest(
            dataset_sha256=dataset.sha256 if isinstance(dataset, DatasetInfo) else dataset,
            model_kind=model,
            hidden=[int(h) for h in extra.pop("hidden", ())],
            channels=[int(c) for c in extra.pop("channels", ())],
            activation=str(extra.pop("activation", "")),
            norm=str(extra.pop("norm", "")),
            target_epsilon=target_epsilon,
            delta=delta or 0.0,  # 0: the enclave gives the job its share (docs/PRIVACY.md)
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
            watermark=watermark,
        )
    except (TypeError, ValueError) as exc:  # a value of the wrong kind (protobuf refuses it)
        raise ConfigError(f"training parameters are invalid: {exc}") from exc


class _Base(abc.ABC):
    _channel: Any  # grpc.Channel or grpc.aio.Channel, opened by _connect

    def __init__(
        self,
        target: str,
        *,
        api_key: str | os.PathLike[str],
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
        sessions: bool = True,
    ) -> None:
        if not target:
            raise ConfigError("target (host:port) is required", reason=ConfigFailure.MISSING_VALUE)
        self._target = target
        self._tls = tls
        self._options = _channel_options(max_message_bytes)
        self._raw_methods: dict[str, Any] = {}
        self._core = ClientCore(
            tenant=tenant,
            api_key=read_api_key(api_key),
            policy=policy,
            suite=suite,
            clock=clock,
            random=random,
            chunk_size=chunk_size,
            sessions=sessions,
        )
        self._ops = Operations(self._core, timeout=timeout, progress=progress)
        self._connect()

    @abc.abstractmethod
    def _connect(self) -> None:
        """Open this client's kind of channel (blocking or asyncio) and its methods."""

    def _raw(self, path: str) -> Any:
        """A unary method that sends a request already serialized (``bytes``) as it is."""
        method = self._raw_methods.get(path)
        if method is None:
            method = self._raw_methods[path] = self._channel.unary_unary(
                path, response_deserializer=common_pb2.SealedResponse.FromString
            )
        return method

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._target!r}, tenant={self._core.tenant!r})"

    @property
    def receipts(self) -> list[Receipt]:
        """Receipts for this client's calls, each verified on arrival (newest last)."""
        return [receipt for receipt, _ in self._core.receipts]

    @property
    def answered_by(self) -> list[ReplicaIdentity]:
        """Replicated deployments: the certified replica behind each receipt (newest last)."""
        return list(self._core.answered_by)


def _advance(op: Op[Any], send: Any, error: BaseException | None) -> Step | StopIteration:
    try:
        return op.throw(error) if error is not None else op.send(send)
    except StopIteration as stop:
        return stop


class Client(_Base):
    """Blocking client. Use as a context manager::

    policy = AttestationPolicy.production(measurements=[EXPECTED])
    with Client("enclave:7443", api_key=Path("default.key"), policy=policy) as client:
        client.upload_model("model.onnx", name="scorer")
        result = client.infer("scorer", {"x": batch})

    ``api_key`` is the key, or the path of a key file (whitespace around the key is stripped).
    """

    def _connect(self) -> None:
        if self._tls is not None:
            self._channel = grpc.secure_channel(
                self._target, self._tls.credentials(), self._options
            )
        else:
            self._channel = grpc.insecure_channel(self._target, self._options)
        self._methods = _methods(self._channel)

    def _execute(self, step: Call | Next) -> Any:
        if isinstance(step, Next):
            return next(step.stream, END)
        method = (
            self._raw(step.path) if isinstance(step.request, bytes) else self._methods[step.path]
        )
        answer = method(step.request, timeout=step.timeout)
        return iter(answer) if step.path in STREAMING_RESPONSE else answer

    def _iterate(self, op: Op[Any]) -> Iterator[Any]:
        """Run ``op``'s steps blocking; yield what it emits, then what it returns."""
        send: Any = None
        error: BaseException | None = None
        try:
            while not isinstance(step := _advance(op, send, error), StopIteration):
                send, error = None, None
                if isinstance(step, Emit):
                    yield step.item
                    continue
                try:
                    send = self._execute(step)
                except BaseException as exc:  # thrown into the operation, which converts it
                    error = exc
            yield step.value
        finally:
            op.close()

    def _run(self, op: Op[T]) -> T:
        *_, result = self._iterate(op)  # an operation that emits nothing yields its result only
        return cast(T, result)

    def _unary(self, method: Method, request: Message, response: M) -> M:
        """A sealed unary call of ``method`` (for tests that send what the SDK would not)."""
        return self._run(self._ops.unary(method, request, response))

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
        """Close the channel."""
        self._channel.close()

    def attest(self, *, force: bool = False) -> AttestedEnclave:
        """Verify the enclave (or return the cached, unexpired verdict). Raises on failure."""
        return self._run(self._ops.attest(force=force))

    def upload_model(self, model: Source, name: str) -> ModelInfo:
        """Encrypt and stream an ONNX model (bytes or a file) to the enclave; return its version."""
        return self._run(self._ops.upload_model(model, name))

    def list_models(self) -> list[ModelInfo]:
        """This tenant's registered models, every version."""
        return self._run(self._ops.list_models())

    def delete_model(self, model: str) -> list[ModelInfo]:
        """Delete ``name@version``, or every version of ``name``; return what was deleted."""
        return self._run(self._ops.delete_model(model))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        output_names: Sequence[str] | None = None,
    ) -> dict[str, npt.NDArray[np.generic]]:
        """Run ``model`` (``name`` or ``name@version``) on ``inputs``; sealed both ways."""
        return self._run(self._ops.infer(model, inputs, output_names))

    def audit_checkpoint(self) -> Checkpoint:
        """This tenant's latest checkpoint, verified under the attested log key."""
        return self._run(self._ops.audit_checkpoint())

    def prove_receipt(self, receipt: Receipt) -> Checkpoint:
        """Prove a receipt's record is in the log's current signed tree; return that tree."""
        return self._run(self._ops.prove_receipt(receipt))

    def audit_consistency(self, old: Checkpoint) -> Checkpoint:
        """Prove the log only grew since ``old``; return the newer checkpoint."""
        return self._run(self._ops.audit_consistency(old))

    def export_audit(
        self,
        out_dir: str | os.PathLike[str],
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
        return self._run(self._ops.export_audit(out_dir, since, until, formats))

    def embed_watermark(
        self,
        model: str,
        key: KeySource,
        dataset: str | DatasetInfo,
        *,
        epochs: int | None = None,
    ) -> WatermarkEmbedding:
        """Mark a registered model with the owner's key (``veil watermark keygen`` KEY.json),
        fine-tuning on an uploaded dataset; the result is registered as a new version.
        ``epochs`` None: the enclave's default (120)."""
        return self._run(self._ops.embed_watermark(model, key, dataset, epochs))

    def verify_watermark(
        self,
        model: str,
        claim_json: str,
        opening: KeySource,
        *,
        threshold: float = 1e-9,
    ) -> WatermarkCheck:
        """Check a claimed watermark on a registered model; the opening reveals the key."""
        return self._run(self._ops.verify_watermark(model, claim_json, opening, threshold))

    def upload_dataset(
        self, data: Source, *, format: str | None = None, label_column: str = ""
    ) -> DatasetInfo:
        """Encrypt and stream a dataset (.npz with x and y, CSV or Parquet) to the enclave."""
        return self._run(self._ops.upload_dataset(data, format, label_column))

    def budget(self, dataset: str | DatasetInfo) -> BudgetInfo:
        """The privacy budget of a dataset: what it had, what is spent, what is left."""
        return self._run(self._ops.budget(dataset))

    def train(
        self,
        dataset: str | DatasetInfo,
        model: str = "mlp",
        *,
        target_epsilon: float,
        delta: float | None = None,
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
        watermark: KeySource | None = None,
        watermark_strength: float = 0.0,
    ) -> TrainingJob:
        """Start a DP-SGD job on an uploaded dataset; iterate ``job.stream()`` for progress.

        ``delta=None`` lets the enclave give the job its share of the dataset's delta budget,
        in proportion to its epsilon, so that delta never runs out before epsilon.
        A refusal for want of budget raises :class:`PrivacyBudgetExceeded` (with what is left)
        from the job's stream. ``watermark`` (a ``veil watermark keygen`` KEY.json) embeds the
        owner's mark while training (``watermark_strength``: 0 for the enclave's default); the
        outcome's ``watermark`` holds the signed claim. The accounting is the same either way.
        """
        request = _train_request(
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
            watermark=None
            if watermark is None
            else training_watermark(watermark, watermark_strength),
        )
        start = self._run(self._ops.train(dataset, request))
        return TrainingJob(self, start)


class AsyncClient(_Base):
    """asyncio client with the same methods as :class:`Client`, as coroutines::

    async with AsyncClient(target, api_key=Path("default.key"), policy=policy) as client:
        out = await client.infer("scorer", {"x": batch})
    """

    def _connect(self) -> None:
        if self._tls is not None:
            self._channel = grpc.aio.secure_channel(
                self._target, self._tls.credentials(), self._options
            )
        else:
            self._channel = grpc.aio.insecure_channel(self._target, self._options)
        self._methods = _methods(self._channel)

    async def _execute(self, step: Call | Next) -> Any:
        if isinstance(step, Next):
            return await anext(step.stream, END)
        method = (
            self._raw(step.path) if isinstance(step.request, bytes) else self._methods[step.path]
        )
        request = step.request
        if step.path in STREAMING_REQUEST:
            request = _aiter(step.request)
        if step.path in STREAMING_RESPONSE:
            return aiter(method(request, timeout=step.timeout))
        return await method(request, timeout=step.timeout)

    async def _iterate(self, op: Op[Any]) -> AsyncIterator[Any]:
        """Run ``op``'s steps awaited; yield what it emits, then what it returns."""
        send: Any = None
        error: BaseException | None = None
        try:
            while not isinstance(step := _advance(op, send, error), StopIteration):
                send, error = None, None
                if isinstance(step, Emit):
                    yield step.item
                    continue
                try:
                    send = await self._execute(step)
                except BaseException as exc:  # thrown into the operation, which converts it
                    error = exc
            yield step.value
        finally:
            op.close()

    async def _run(self, op: Op[T]) -> T:
        results = [item async for item in self._iterate(op)]
        return cast(T, results[-1])

    async def _unary(self, method: Method, request: Message, response: M) -> M:
        """A sealed unary call of ``method`` (for tests that send what the SDK would not)."""
        return await self._run(self._ops.unary(method, request, response))

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
        """Close the channel."""
        await self._channel.close()

    async def attest(self, *, force: bool = False) -> AttestedEnclave:
        """Verify the enclave (or return the cached, unexpired verdict). Raises on failure."""
        return await self._run(self._ops.attest(force=force))

    async def upload_model(self, model: Source, name: str) -> ModelInfo:
        """Encrypt and stream an ONNX model (bytes or a file) to the enclave; return its version."""
        return await self._run(self._ops.upload_model(model, name))

    async def list_models(self) -> list[ModelInfo]:
        """This tenant's registered models, every version."""
        return await self._run(self._ops.list_models())

    async def delete_model(self, model: str) -> list[ModelInfo]:
        """Delete ``name@version``, or every version of ``name``; return what was deleted."""
        return await self._run(self._ops.delete_model(model))

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        *,
        output_names: Sequence[str] | None = None,
    ) -> dict[str, npt.NDArray[np.generic]]:
        """Run ``model`` (``name`` or ``name@version``) on ``inputs``; sealed both ways."""
        return await self._run(self._ops.infer(model, inputs, output_names))

    async def audit_checkpoint(self) -> Checkpoint:
        """This tenant's latest checkpoint, verified under the attested log key."""
        return await self._run(self._ops.audit_checkpoint())

    async def prove_receipt(self, receipt: Receipt) -> Checkpoint:
        """Prove a receipt's record is in the log's current signed tree; return that tree."""
        return await self._run(self._ops.prove_receipt(receipt))

    async def audit_consistency(self, old: Checkpoint) -> Checkpoint:
        """Prove the log only grew since ``old``; return the newer checkpoint."""
        return await self._run(self._ops.audit_consistency(old))

    async def export_audit(
        self,
        out_dir: str | os.PathLike[str],
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
        return await self._run(self._ops.export_audit(out_dir, since, until, formats))

    async def embed_watermark(
        self,
        model: str,
        key: KeySource,
        dataset: str | DatasetInfo,
        *,
        epochs: int | None = None,
    ) -> WatermarkEmbedding:
        """Mark a registered model with the owner's key (``veil watermark keygen`` KEY.json),
        fine-tuning on an uploaded dataset; the result is registered as a new version.
        ``epochs`` None: the enclave's default (120)."""
        return await self._run(self._ops.embed_watermark(model, key, dataset, epochs))

    async def verify_watermark(
        self,
        model: str,
        claim_json: str,
        opening: KeySource,
        *,
        threshold: float = 1e-9,
    ) -> WatermarkCheck:
        """Check a claimed watermark on a registered model; the opening reveals the key."""
        return await self._run(self._ops.verify_watermark(model, claim_json, opening, threshold))

    async def upload_dataset(
        self, data: Source, *, format: str | None = None, label_column: str = ""
    ) -> DatasetInfo:
        """Encrypt and stream a dataset (.npz with x and y, CSV or Parquet) to the enclave."""
        return await self._run(self._ops.upload_dataset(data, format, label_column))

    async def budget(self, dataset: str | DatasetInfo) -> BudgetInfo:
        """The privacy budget of a dataset: what it had, what is spent, what is left."""
        return await self._run(self._ops.budget(dataset))

    async def train(
        self,
        dataset: str | DatasetInfo,
        model: str = "mlp",
        *,
        target_epsilon: float,
        delta: float | None = None,
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
        watermark: KeySource | None = None,
        watermark_strength: float = 0.0,
    ) -> AsyncTrainingJob:
        """Start a DP-SGD job on an uploaded dataset; iterate ``job.stream()`` for progress.

        ``delta=None`` lets the enclave give the job its share of the dataset's delta budget,
        in proportion to its epsilon, so that delta never runs out before epsilon.
        A refusal for want of budget raises :class:`PrivacyBudgetExceeded` (with what is left)
        from the job's stream. ``watermark`` (a ``veil watermark keygen`` KEY.json) embeds the
        owner's mark while training (``watermark_strength``: 0 for the enclave's default); the
        outcome's ``watermark`` holds the signed claim. The accounting is the same either way.
        """
        request = _train_request(
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
            watermark=None
            if watermark is None
            else training_watermark(watermark, watermark_strength),
        )
        start = await self._run(self._ops.train(dataset, request))
        return AsyncTrainingJob(self, start)


class TrainingJob:
    """A running training job: ``stream()`` yields progress and finally the outcome."""

    def __init__(self, client: Client, start: TrainingStart) -> None:
        self._events = client._iterate(client._ops.training_events(start))
        self._outcome: TrainingOutcome | None = None

    def __repr__(self) -> str:
        return f"TrainingJob(done={self._outcome is not None})"

    def stream(self) -> Iterator[TrainingProgress | TrainingOutcome]:
        """Progress events in order (each sealed and checked), then the certified outcome."""
        if self._outcome is not None:
            yield self._outcome
            return
        for item in self._events:
            if isinstance(item, TrainingOutcome):
                self._outcome = item
            yield item

    def result(self) -> TrainingOutcome:
        """Wait for the job to finish; return the registered model and its certified record."""
        for item in self.stream():
            if isinstance(item, TrainingOutcome):
                return item
        raise ProtocolError(
            "training stream ended without a result", reason=ProtocolFailure.OUT_OF_ORDER
        )


class AsyncTrainingJob:
    """A running training job of an :class:`AsyncClient`: the same methods, awaited."""

    def __init__(self, client: AsyncClient, start: TrainingStart) -> None:
        self._events = client._iterate(client._ops.training_events(start))
        self._outcome: TrainingOutcome | None = None

    def __repr__(self) -> str:
        return f"AsyncTrainingJob(done={self._outcome is not None})"

    async def stream(self) -> AsyncIterator[TrainingProgress | TrainingOutcome]:
        """Progress events in order (each sealed and checked), then the certified outcome."""
        if self._outcome is not None:
            yield self._outcome
            return
        async for item in self._events:
            if isinstance(item, TrainingOutcome):
                self._outcome = item
            yield item

    async def result(self) -> TrainingOutcome:
        """Wait for the job to finish; return the registered model and its certified record."""
        async for item in self.stream():
            if isinstance(item, TrainingOutcome):
                return item
        raise ProtocolError(
            "training stream ended without a result", reason=ProtocolFailure.OUT_OF_ORDER
        )


async def _aiter(messages: Iterator[T]) -> AsyncIterator[T]:
    for message in messages:
        yield message
