"""Every client operation, written once, as a generator of channel steps.

``Client`` and ``AsyncClient`` are two drivers of the same operations: an operation yields a
:class:`Call` (start an RPC), a :class:`Next` (the next message of a response stream) or an
:class:`Emit` (an item for the caller of a streaming operation), and receives the answer back —
or, when the channel failed, the ``grpc.RpcError`` thrown in at the ``yield``. Attestation and
its cache, sealing, the re-attest-once retry on ``key-rotated``, uploads, opening answers and
turning every failure into a ``VeilError`` live here; the drivers only run the steps, blocking
or awaited. So the two clients cannot drift.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc
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
from veil.sdk._core import ClientCore, remote_error
from veil.sdk._models import ModelInfo, WatermarkCheck, WatermarkEmbedding
from veil.sdk._training import (
    BudgetInfo,
    DatasetInfo,
    TrainingOutcome,
    TrainingProgress,
    outcome_from_result,
)
from veil.sdk.audit import Checkpoint, Receipt
from veil.sdk.errors import (
    ConfigError,
    ConfigFailure,
    PrivacyBudgetExceeded,
    ProtocolError,
    ProtocolFailure,
    RemoteError,
    RemoteReason,
    WatermarkError,
    WatermarkFailure,
)
from veil.sdk.evidence import AttestedEnclave, to_ms
from veil.sdk.protocol import Method
from veil.sdk.sealing import SealedCall
from veil.v1 import (
    audit_pb2,
    inference_pb2,
    models_pb2,
    training_pb2,
    watermark_pb2,
)

__all__ = [
    "ATTEST",
    "END",
    "STREAMING_REQUEST",
    "STREAMING_RESPONSE",
    "Call",
    "Emit",
    "Next",
    "Op",
    "Operations",
    "Source",
    "Step",
    "TrainingStart",
    "read_api_key",
    "read_source",
]

T = TypeVar("T")
M = TypeVar("M", bound=Message)
Source = str | os.PathLike[str] | bytes

ATTEST: Final = "/veil.v1.AttestationService/GetAttestation"
STREAMING_REQUEST: Final = frozenset({Method.UPLOAD_MODEL, Method.UPLOAD_DATASET})
STREAMING_RESPONSE: Final = frozenset({Method.TRAIN, Method.AUDIT_EXPORT_STREAM})
DATASET_FORMATS: Final = ("npz", "csv", "parquet")


class _End:
    def __repr__(self) -> str:
        return "END"


END: Final = _End()  # what a Next step receives when its stream has no more messages


@dataclass(frozen=True)
class Call:
    """Start the RPC at ``path`` (a full gRPC method name) with ``request``.

    Answer: the response message; for a method in ``STREAMING_RESPONSE``, a handle for ``Next``.
    A request for a method in ``STREAMING_REQUEST`` is an iterator of messages.
    """

    path: str
    request: Any  # a message; ``bytes``: a unary request already serialized, sent as it is
    timeout: float | None


@dataclass(frozen=True)
class Next:
    """The next message of the response stream ``stream`` (a ``Call``'s answer), or ``END``."""

    stream: Any


@dataclass(frozen=True)
class Emit:
    """An item a streaming operation hands to its caller (answer: ``None``)."""

    item: Any


Step = Call | Next | Emit
Op = Generator[Step, Any, T]


def _problem(exc: OSError) -> tuple[str, ConfigFailure]:
    if isinstance(exc, FileNotFoundError):
        return "does not exist", ConfigFailure.MISSING_FILE
    return f"cannot be read ({exc.strerror or type(exc).__name__})", ConfigFailure.UNREADABLE


def read_source(source: Source, what: str) -> bytes:
    """Bytes as given, or a file's contents; a missing or unreadable file is a ``ConfigError``."""
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        problem, reason = _problem(exc)
        raise ConfigError(f"{what} file {os.fspath(source)} {problem}", reason=reason) from exc


def read_api_key(api_key: str | os.PathLike[str]) -> str:
    """The API key: a string, or a key file (such as ``default.key``); whitespace is stripped."""
    if isinstance(api_key, str):
        key = api_key.strip()
    else:
        key = read_source(api_key, "API key").decode("utf-8", "replace").strip()
    if not key:
        raise ConfigError(
            "api_key is required (a key, or the path of a key file)",
            reason=ConfigFailure.MISSING_VALUE,
        )
    return key


def _key_doc(source: str | os.PathLike[str] | Mapping[str, Any], what: str) -> dict[str, Any]:
    """A watermark key file or opening (path, JSON text or mapping) as a dict."""
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, str) and source.lstrip().startswith("{"):
        text = source
    else:
        text = read_source(source, what).decode("utf-8", "replace")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WatermarkError(
            f"{what} is not JSON (line {exc.lineno})", reason=WatermarkFailure.MALFORMED_KEY
        ) from exc
    if not isinstance(doc, dict):
        raise WatermarkError(f"{what} must be a JSON object", reason=WatermarkFailure.MALFORMED_KEY)
    return doc


def _owner_keys(key: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[bytes, str]:
    """(owner's Ed25519 seed, watermark key JSON) from a ``veil watermark keygen`` key file."""
    doc = _key_doc(key, "watermark key")
    try:
        return bytes.fromhex(str(doc["owner_private_key"])), json.dumps(doc["watermark"])
    except KeyError as exc:
        raise WatermarkError(
            f"watermark key file lacks {exc}", reason=WatermarkFailure.MALFORMED_KEY
        ) from exc
    except ValueError as exc:
        raise WatermarkError(
            "watermark key file's owner_private_key is not hex",
            reason=WatermarkFailure.MALFORMED_KEY,
        ) from exc


def training_watermark(
    key: str | os.PathLike[str] | Mapping[str, Any], strength: float
) -> training_pb2.TrainingWatermark:
    """The ``TrainRequest.watermark`` for the owner's key file (sealed with the request)."""
    owner, secret = _owner_keys(key)
    return training_pb2.TrainingWatermark(
        owner_private_key=owner, watermark_key_json=secret, strength=strength
    )


def _digest(dataset: str | DatasetInfo) -> str:
    return dataset.sha256 if isinstance(dataset, DatasetInfo) else dataset


def dataset_format(source: Source, fmt: str | None) -> str:
    if fmt is not None:  # the enclave says which formats it reads
        return fmt
    if isinstance(source, bytes):
        raise ConfigError(
            "format is required when the dataset is given as bytes",
            reason=ConfigFailure.MISSING_VALUE,
        )
    suffix = Path(source).suffix.lower().lstrip(".")
    if suffix not in DATASET_FORMATS:
        raise ConfigError(
            f"cannot tell the dataset format of {os.fspath(source)} from its extension; "
            f"name it .npz, .csv or .parquet, or pass format=",
            reason=ConfigFailure.UNSUPPORTED,
        )
    return suffix


@dataclass(frozen=True)
class TrainingStart:
    """A started training job: what its event stream is opened with."""

    enclave: AttestedEnclave
    call: SealedCall
    stream: Any
    dataset: str


class Operations:
    """The operations of a Veil client over one :class:`ClientCore`."""

    def __init__(self, core: ClientCore, *, timeout: float, progress: bool) -> None:
        self.core = core
        self.timeout = timeout
        self.progress = progress

    # -- attestation, sealing, retry ------------------------------------------------------

    def attest(self, *, force: bool = False) -> Op[AttestedEnclave]:
        """Verify the enclave (or return the cached, unexpired verdict). Raises on failure."""
        if not force and (cached := self.core.cached()) is not None:
            return cached
        challenge = self.core.challenge()
        try:
            evidence = yield Call(ATTEST, challenge.request(), self.timeout)
        except grpc.RpcError as exc:
            raise remote_error(exc) from exc
        return self.core.accept(challenge, evidence)

    def sealed(self, run: Callable[[AttestedEnclave], Op[T]]) -> Op[T]:
        """Run ``run`` with a verified enclave; on ``key-rotated``, re-attest and retry once; on
        ``session-expired`` (nothing was processed: the enclave no longer holds the session —
        restarted, another worker or replica, idle too long), retry once opening a new one."""
        enclave = yield from self.attest()
        try:
            return (yield from run(enclave))
        except RemoteError as exc:
            if exc.reason is RemoteReason.SESSION_EXPIRED:
                self.core.drop_session()
                try:
                    return (yield from run(enclave))
                except RemoteError as again:
                    if again.reason is not RemoteReason.KEY_ROTATED:
                        raise
            elif exc.reason is not RemoteReason.KEY_ROTATED:
                raise
        self.core.invalidate()
        enclave = yield from self.attest(force=True)
        return (yield from run(enclave))

    def unary(self, method: Method, request: Message | bytes, response: M) -> Op[M]:
        """A sealed unary call: seal, send, open (with its receipt checked).

        ``request`` is the method's request message, or its serialization.
        """

        def run(enclave: AttestedEnclave) -> Op[M]:
            sealed = self.core.seal(enclave, method, request, wire=True)
            # Wire bytes built directly go out as they are (``Call`` with ``bytes``).
            outgoing = sealed.wire if sealed.wire is not None else sealed.request
            try:
                answer = yield Call(method.value, outgoing, self.timeout)
            except grpc.RpcError as exc:
                raise remote_error(exc, sealed) from exc
            return self.core.open(enclave, sealed, answer, type(response)())

        return self.sealed(run)

    def _upload(
        self,
        method: Method,
        size: int,
        label: str,
        prepare: Callable[
            [AttestedEnclave, Callable[[int], object]],
            tuple[SealedCall, Iterator[models_pb2.UploadMessage]],
        ],
        response: M,
    ) -> Op[M]:
        """Seal a header, stream encrypted chunks (with a progress bar), open the answer."""

        def run(enclave: AttestedEnclave) -> Op[M]:
            with self._bar(size, f"uploading {label}", unit="B") as bar:
                sealed, messages = prepare(enclave, bar.update)
                try:
                    answer = yield Call(method.value, messages, self.timeout)
                except grpc.RpcError as exc:
                    raise remote_error(exc, sealed) from exc
            return self.core.open(enclave, sealed, answer, type(response)())

        return self.sealed(run)

    def _bar(self, total: int | None, desc: str, *, unit: str = "it") -> tqdm[None]:
        return tqdm(
            total=total,
            unit=unit,
            unit_scale=unit == "B",
            desc=desc,
            disable=not self.progress,
            leave=False,
        )

    # -- models and inference -------------------------------------------------------------

    def upload_model(self, model: Source, name: str) -> Op[ModelInfo]:
        data = read_source(model, "model")
        info = yield from self._upload(
            Method.UPLOAD_MODEL,
            len(data),
            name,
            lambda enclave, progress: self.core.upload(enclave, data, name, progress),
            models_pb2.ModelInfo(),
        )
        return ModelInfo.from_proto(info)

    def list_models(self) -> Op[list[ModelInfo]]:
        response = yield from self.unary(
            Method.LIST_MODELS, models_pb2.ListModelsRequest(), models_pb2.ListModelsResponse()
        )
        return ClientCore.model_infos(response)

    def delete_model(self, model: str) -> Op[list[ModelInfo]]:
        response = yield from self.unary(
            Method.DELETE_MODEL,
            models_pb2.DeleteModelRequest(model=model),
            models_pb2.ListModelsResponse(),
        )
        return ClientCore.model_infos(response)

    def infer(
        self,
        model: str,
        inputs: Mapping[str, npt.ArrayLike],
        output_names: Sequence[str] | None,
    ) -> Op[dict[str, npt.NDArray[np.generic]]]:
        request = ClientCore.infer_payload(model, inputs, output_names)
        response = yield from self.unary(Method.INFER, request, inference_pb2.InferResponse())
        return ClientCore.infer_result(response)

    # -- audit log ------------------------------------------------------------------------

    def audit_checkpoint(self) -> Op[Checkpoint]:
        response = yield from self.unary(
            Method.AUDIT_CHECKPOINT, audit_pb2.CheckpointRequest(), audit_pb2.CheckpointResponse()
        )
        enclave = yield from self.attest()
        return checked_checkpoint(self.core.answering(enclave), self.core.tenant, response)

    def prove_receipt(self, receipt: Receipt) -> Op[Checkpoint]:
        response = yield from self.unary(
            Method.AUDIT_INCLUSION,
            audit_pb2.InclusionProofRequest(leaf_index=receipt.leaf_index),
            audit_pb2.InclusionProofResponse(),
        )
        enclave = yield from self.attest()
        return checked_inclusion(self.core.answering(enclave), receipt, response)

    def audit_consistency(self, old: Checkpoint) -> Op[Checkpoint]:
        response = yield from self.unary(
            Method.AUDIT_CONSISTENCY,
            audit_pb2.ConsistencyProofRequest(first_size=old.size),
            audit_pb2.ConsistencyProofResponse(),
        )
        enclave = yield from self.attest()
        return checked_consistency(self.core.answering(enclave), old, response)

    def export_audit(
        self,
        out_dir: str | os.PathLike[str],
        since: datetime | int | None,
        until: datetime | None,
        formats: Sequence[str],
    ) -> Op[Path]:
        if isinstance(since, int) and since < 0:
            raise ConfigError("since must be a time or a leaf index >= 0")
        request = audit_pb2.ExportRequest(
            since_ms=to_ms(since) if isinstance(since, datetime) else 0,
            until_ms=to_ms(until) if until else 0,
            formats=list(formats),
            from_index=since if isinstance(since, int) else 0,
        )

        def run(enclave: AttestedEnclave) -> Op[Path]:
            # A stream's refusal shows only once it is read: seal it one-shot, never retried.
            sealed = self.core.seal(enclave, Method.AUDIT_EXPORT_STREAM, request, session=False)
            try:
                receiver = ExportReceiver(Path(out_dir))
            except OSError as exc:
                raise ConfigError(
                    f"export directory {os.fspath(out_dir)} cannot be used "
                    f"({exc.strerror or type(exc).__name__})",
                    reason=ConfigFailure.UNREADABLE,
                ) from exc
            received = 0
            try:
                stream = yield Call(Method.AUDIT_EXPORT_STREAM.value, sealed.request, self.timeout)
                while (message := (yield Next(stream))) is not END:
                    part = self.core.open(
                        enclave,
                        sealed,
                        message,
                        audit_pb2.ExportStreamMessage(),
                        seq=received,
                        stream=True,
                    )
                    received += 1
                    receiver.add(part, final=message.final)
                # a replica's export: the certificate of the replica whose log it is
                replicated = enclave.claims.manifest_sha256 and self.core.answered_by
                replica = self.core.answered_by[-1].certificate if replicated else b""
                return receiver.finish(enclave, replica)
            except grpc.RpcError as exc:
                receiver.abort()
                raise remote_error(exc, sealed, seq=received) from exc
            except BaseException:
                receiver.abort()
                raise

        return (yield from self.sealed(run))

    # -- watermarking ---------------------------------------------------------------------

    def embed_watermark(
        self,
        model: str,
        key: str | os.PathLike[str] | Mapping[str, Any],
        dataset: str | DatasetInfo,
        epochs: int | None,
    ) -> Op[WatermarkEmbedding]:
        if epochs is not None and not 1 <= epochs < 2**32:
            raise ConfigError(f"epochs must be a positive integer, not {epochs}")
        owner, secret = _owner_keys(key)
        response = yield from self.unary(
            Method.EMBED_WATERMARK,
            watermark_pb2.EmbedWatermarkRequest(
                model=model,
                owner_private_key=owner,
                watermark_key_json=secret,
                dataset_sha256=_digest(dataset),
                epochs=epochs or 0,  # 0: the enclave's default
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
        opening: str | os.PathLike[str] | Mapping[str, Any],
        threshold: float,
    ) -> Op[WatermarkCheck]:
        doc = _key_doc(opening, "watermark opening")
        response = yield from self.unary(
            Method.VERIFY_WATERMARK,
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

    def upload_dataset(self, data: Source, fmt: str | None, label_column: str) -> Op[DatasetInfo]:
        chosen = dataset_format(data, fmt)
        raw = read_source(data, "dataset")
        info = yield from self._upload(
            Method.UPLOAD_DATASET,
            len(raw),
            "dataset",
            lambda enclave, progress: self.core.upload_dataset(
                enclave, raw, chosen, label_column, progress
            ),
            training_pb2.DatasetInfo(),
        )
        return DatasetInfo.from_proto(info)

    def budget(self, dataset: str | DatasetInfo) -> Op[BudgetInfo]:
        response = yield from self.unary(
            Method.GET_BUDGET,
            training_pb2.BudgetRequest(dataset_sha256=_digest(dataset)),
            training_pb2.BudgetResponse(),
        )
        return BudgetInfo.from_proto(response)

    def train(
        self, dataset: str | DatasetInfo, request: training_pb2.TrainRequest
    ) -> Op[TrainingStart]:
        enclave = yield from self.attest()
        # A stream's refusal shows only once it is read: seal it one-shot, never retried.
        sealed = self.core.seal(enclave, Method.TRAIN, request, session=False)
        try:
            stream = yield Call(Method.TRAIN.value, sealed.request, None)
        except grpc.RpcError as exc:
            raise remote_error(exc, sealed) from exc
        return TrainingStart(enclave, sealed, stream, _digest(dataset))

    def training_events(self, start: TrainingStart) -> Op[TrainingOutcome]:
        """Emit progress events in order (each opened and checked), then return the outcome.

        A refusal for want of budget becomes :class:`PrivacyBudgetExceeded` with what is left.
        """
        bar = self._bar(None, "training")
        received = 0
        try:
            while (sealed := (yield Next(start.stream))) is not END:
                received += 1
                event = self.core.open(
                    start.enclave,
                    start.call,
                    sealed,
                    training_pb2.TrainEvent(),
                    seq=received - 1,
                    stream=True,
                )
                if event.HasField("progress"):
                    p = event.progress
                    bar.total = p.total_steps
                    bar.n = p.step
                    bar.set_postfix(epsilon=f"{p.epsilon:.3f}", loss=f"{p.loss:.4f}")
                    yield Emit(TrainingProgress(p.epoch, p.step, p.total_steps, p.loss, p.epsilon))
                    continue
                if not sealed.final:
                    raise ProtocolError(
                        "training result arrived before the end of the stream",
                        reason=ProtocolFailure.OUT_OF_ORDER,
                    )
                return outcome_from_result(event.result, self.core.answering(start.enclave))
        except grpc.RpcError as exc:
            error = remote_error(exc, start.call, seq=received)
            if error.reason is not RemoteReason.BUDGET_EXHAUSTED:
                raise error from exc
            left = yield from self.budget(start.dataset)
            raise PrivacyBudgetExceeded(
                f"{error.detail}; the dataset has epsilon {left.epsilon_remaining:.4g} and "
                f"delta {left.delta_remaining:.3g} left",
                remaining_epsilon=left.epsilon_remaining,
                remaining_delta=left.delta_remaining,
            ) from error
        finally:
            bar.close()
        raise ProtocolError(
            "training stream ended without a result", reason=ProtocolFailure.OUT_OF_ORDER
        )
