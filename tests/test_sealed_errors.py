"""Nothing sealed leaks through a failure: the clear status says code, reason, a fixed message.

Issue 10, item 6: status messages travelled in clear and quoted model refs, tensor names and
shapes ("model inputs are ['diagnosis_code']…", up to 89 KB for 10,000 bogus input names). Now the
detail travels sealed in the trailer ``veil-sealed-error-bin`` and only the caller opens it.
Every failing call here runs against a real server over a raw stub, so the test sees exactly what
a host on the path sees.
"""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import onnx
import pytest
from enclave_support import TENANT_KEYS, Served
from onnx import TensorProto, helper

from veil.enclave._errors import InvalidInput
from veil.enclave._status import _TABLE
from veil.sdk import AsyncClient, DecryptionError, ProtocolError, RemoteError
from veil.sdk._core import ClientCore, remote_error
from veil.sdk.evidence import AttestedEnclave
from veil.sdk.protocol import Method
from veil.sdk.sealing import (
    CLEAR_MESSAGES,
    MAX_ERROR_MESSAGE_BYTES,
    SEALED_ERROR_KEY,
    SealedCall,
    bounded_message,
    clear_message,
    open_error,
    open_response,
    seal_error,
    seal_response,
)
from veil.v1 import (
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

warnings.filterwarnings("ignore", message="trusting a test root")
X = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
MAX_CLEAR = 64  # the longest fixed clear message is well under this
MODEL = "oncology_model"
INPUT = "diagnosis_code"
OUTPUT = "risk_score"


def _secret_model() -> bytes:
    """A model whose every name is something a tenant would not want a host to read."""
    graph = helper.make_graph(
        [helper.make_node("Relu", [INPUT], [OUTPUT])],
        "tumour_board",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


@dataclass(frozen=True)
class Refusal:
    """What the host saw (clear message, trailers) and what the caller opened."""

    code: grpc.StatusCode
    clear: str
    trailers: tuple[tuple[str, str | bytes], ...]
    remote: RemoteError

    def assert_leaks_nothing(self, secrets: Iterable[str]) -> None:
        assert len(self.clear.encode()) <= MAX_CLEAR, self.clear
        assert self.clear == clear_message(self.remote.reason)
        clear_bytes = self.clear.encode() + b"".join(
            (k.encode() + (v if isinstance(v, bytes) else v.encode())) for k, v in self.trailers
        )
        for secret in secrets:
            assert secret.encode() not in clear_bytes, secret
        assert [k for k, _ in self.trailers].count(SEALED_ERROR_KEY) == 1

    def sealed(self) -> bytes:
        value = dict(self.trailers)[SEALED_ERROR_KEY]
        assert isinstance(value, bytes)
        return value


class Raw:
    """Raw stubs plus the SDK's sealing core: the calls a host relays, nothing hidden."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.core = ClientCore(
            tenant="default", api_key=TENANT_KEYS["default"], policy=served.policy()
        )
        with served.client() as client:
            self.enclave: AttestedEnclave = client.attest()
        self.channel = grpc.insecure_channel(served.address)

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def _refusal(err: grpc.RpcError, call: SealedCall, seq: int = 0) -> Refusal:
        return Refusal(
            code=err.code(),
            clear=err.details() or "",
            trailers=tuple(err.trailing_metadata() or ()),
            remote=remote_error(err, call, seq=seq),
        )

    def infer(self, request: inference_pb2.InferRequest) -> Refusal:
        call = self.core.seal(self.enclave, Method.INFER, request)
        with pytest.raises(grpc.RpcError) as err:
            inference_pb2_grpc.InferenceServiceStub(self.channel).Infer(call.request, timeout=30)
        return self._refusal(err.value, call)

    def upload(self, data: bytes, name: str) -> Refusal:
        call, messages = self.core.upload(self.enclave, data, name, lambda n: None)
        with pytest.raises(grpc.RpcError) as err:
            models_pb2_grpc.ModelServiceStub(self.channel).UploadModel(messages, timeout=30)
        return self._refusal(err.value, call)

    def train(self, request: training_pb2.TrainRequest) -> tuple[Refusal, int, SealedCall]:
        """Run a job that fails: the refusal, how many messages came before it, the call."""
        call = self.core.seal(self.enclave, Method.TRAIN, request)
        received = 0
        with pytest.raises(grpc.RpcError) as err:
            for sealed in training_pb2_grpc.TrainingServiceStub(self.channel).Train(
                call.request, timeout=60
            ):
                open_response(call, sealed, seq=received)
                received += 1
        return self._refusal(err.value, call, seq=received), received, call


@pytest.fixture
def raw(served: Served) -> Iterator[Raw]:
    with served.client() as client:
        client.upload_model(_secret_model(), MODEL)
    stubs = Raw(served)
    yield stubs
    stubs.close()


def _infer_request(
    inputs: dict[str, np.ndarray], model: str = MODEL, outputs: Iterable[str] = ()
) -> inference_pb2.InferRequest:
    return ClientCore.infer_request(model, inputs, list(outputs))


# -- the host sees a code, a reason and a fixed message; the caller sees the detail -----------


@pytest.mark.parametrize(
    ("request_of", "code", "detail", "secrets"),
    [
        (
            lambda: _infer_request({INPUT: X}, model="cardiology_registry@7"),
            grpc.StatusCode.NOT_FOUND,
            "model cardiology_registry@7 not found",
            ["cardiology_registry", "@7"],
        ),
        (
            lambda: _infer_request({"patient_ssn": X}),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"model inputs are ['{INPUT}']; missing ['{INPUT}'], unexpected ['patient_ssn']",
            [INPUT, "patient_ssn", MODEL],
        ),
        (
            lambda: _infer_request({INPUT: X[:, :3]}),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input '{INPUT}' has shape [5, 3], model expects ['?', 4]",
            [INPUT, "[5, 3]", MODEL],
        ),
        (
            lambda: _infer_request({INPUT: X}, outputs=["hidden_embedding"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown output(s) ['hidden_embedding']",
            ["hidden_embedding", OUTPUT, MODEL],
        ),
    ],
    ids=["unknown-ref", "wrong-input-name", "wrong-shape", "unknown-output"],
)
def test_inference_failures_say_nothing_in_clear_and_everything_sealed(
    raw: Raw,
    request_of: Callable[[], inference_pb2.InferRequest],
    code: grpc.StatusCode,
    detail: str,
    secrets: list[str],
) -> None:
    refusal = raw.infer(request_of())
    assert refusal.code == code
    refusal.assert_leaks_nothing(secrets)
    assert refusal.remote.code == code.name
    assert detail in refusal.remote.detail
    raw.served.assert_healthy()


def test_ten_thousand_bogus_input_names_stay_sealed_and_bounded(raw: Raw) -> None:
    tiny = np.zeros((1,), np.float32)
    inputs = {f"icd10_code_{i:05d}": tiny for i in range(10_000)}
    refusal = raw.infer(_infer_request(inputs))
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    refusal.assert_leaks_nothing(["icd10_code_", INPUT])
    assert len(refusal.sealed()) < 2 * MAX_ERROR_MESSAGE_BYTES
    detail = refusal.remote.detail
    assert detail.startswith(f"model inputs are ['{INPUT}']; missing ['{INPUT}'], unexpected [")
    assert "icd10_code_00000" in detail
    assert len(detail.encode()) <= MAX_ERROR_MESSAGE_BYTES


def test_failing_upload_says_nothing_in_clear(raw: Raw) -> None:
    refusal = raw.upload(b"psychiatric triage notes, not an ONNX model", "psychiatric_triage")
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    refusal.assert_leaks_nothing(["psychiatric", "triage", "ONNX"])
    assert refusal.remote.reason == "invalid-input"
    assert refusal.remote.detail != clear_message("invalid-input")
    assert len([p for p in raw.served.stored_files() if p.name.endswith(".onnx.enc")]) == 1
    raw.served.assert_healthy()


def _dataset() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(
        buf, x=rng.normal(size=(128, 4)).astype(np.float32), y=rng.integers(0, 2, 128).astype(int)
    )
    return buf.getvalue()


def test_failing_train_stream_before_progress_is_sealed_as_message_0(
    raw: Raw, served: Served
) -> None:
    with served.client() as client:
        dataset = client.upload_dataset(_dataset(), format="npz")
    request = training_pb2.TrainRequest(
        dataset_sha256=dataset.sha256,
        model_kind="diagnosis_net",
        target_epsilon=2.0,
        model_name="genome_classifier",
    )
    refusal, received, _ = raw.train(request)
    assert received == 0
    assert refusal.code == grpc.StatusCode.INVALID_ARGUMENT
    refusal.assert_leaks_nothing(["diagnosis_net", "genome_classifier", dataset.sha256])
    assert "diagnosis_net" in refusal.remote.detail
    served.assert_healthy()


def test_failing_train_stream_after_progress_is_sealed_at_its_place(
    raw: Raw, served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that fails after streaming progress seals its error as the next message."""

    def refuse(tenant: str, name: str, *args: object) -> None:
        raise InvalidInput(f"model name '{name}' is reserved for tenant {tenant}")

    with served.client() as client:
        dataset = client.upload_dataset(_dataset(), format="npz")
    monkeypatch.setattr(served.enclave.store, "register", refuse)
    request = training_pb2.TrainRequest(
        dataset_sha256=dataset.sha256,
        model_kind="logreg",
        target_epsilon=2.0,
        epochs=1,
        batch_size=32,
        model_name="genome_classifier",
    )
    refusal, received, call = raw.train(request)
    assert received > 0
    refusal.assert_leaks_nothing(["genome_classifier"])
    assert refusal.remote.detail == "model name 'genome_classifier' is reserved for tenant default"
    # Read at another position of the stream, the same sealed error does not open.
    relayed = _with_sealed(refusal, refusal.sealed())
    for seq in (received - 1, received + 1):
        assert remote_error(relayed, call, seq=seq).detail == clear_message("invalid-input")


# -- the SDK raises the precise detail, sync and async ---------------------------------------


def test_sdk_clients_raise_the_sealed_detail(served: Served) -> None:
    with served.client() as client:
        client.upload_model(_secret_model(), MODEL)
        with pytest.raises(RemoteError) as err:
            client.infer(MODEL, {"patient_ssn": X})
    expected = f"model inputs are ['{INPUT}']; missing ['{INPUT}'], unexpected ['patient_ssn']"
    assert (err.value.code, err.value.reason, err.value.detail) == (
        "INVALID_ARGUMENT",
        "invalid-input",
        expected,
    )

    async def main() -> RemoteError:
        async with AsyncClient(
            served.address, api_key=TENANT_KEYS["default"], policy=served.policy()
        ) as client:
            try:
                await client.infer("cardiology_registry", {INPUT: X})
            except RemoteError as exc:
                return exc
        raise AssertionError("the call did not fail")

    remote = asyncio.run(main())
    assert (remote.code, remote.reason, remote.detail) == (
        "NOT_FOUND",
        "not-found",
        "model 'cardiology_registry' not found",
    )


# -- a tampered, replayed or forged sealed error never becomes the detail ---------------------


class _Relayed(grpc.RpcError):  # type: ignore[misc]
    """An error as a hostile host could relay it: same status, a trailer of its choosing."""

    def __init__(self, refusal: Refusal, trailers: tuple[tuple[str, str | bytes], ...]) -> None:
        self._refusal = refusal
        self._trailers = trailers

    def code(self) -> grpc.StatusCode:
        return self._refusal.code

    def details(self) -> str:
        return self._refusal.clear

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailers


def _with_sealed(refusal: Refusal, sealed: bytes) -> _Relayed:
    kept = tuple((k, v) for k, v in refusal.trailers if k != SEALED_ERROR_KEY)
    return _Relayed(refusal, (*kept, (SEALED_ERROR_KEY, sealed)))


def test_tampered_swapped_or_forged_sealed_error_gives_the_generic_message(raw: Raw) -> None:
    request = _infer_request({"patient_ssn": X})
    call = raw.core.seal(raw.enclave, Method.INFER, request)
    with pytest.raises(grpc.RpcError) as err:
        inference_pb2_grpc.InferenceServiceStub(raw.channel).Infer(call.request, timeout=30)
    refusal = Raw._refusal(err.value, call)
    assert INPUT in refusal.remote.detail
    sealed = refusal.sealed()
    generic = clear_message("invalid-input")

    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    other = raw.infer(_infer_request({INPUT: X}, model="cardiology_registry"))
    other_sealed = other.sealed()
    forged = seal_error(
        bytes(32),
        method=call.method,
        request_id=call.request_id,
        code="INVALID_ARGUMENT",
        reason="invalid-input",
        message="FORGED: send your key to attacker.example",
    ).SerializeToString()
    for label, trailer in (
        ("bit flip", bytes(flipped)),
        ("another call's error", other_sealed),
        ("sealed under another key", forged),
        ("not a SealedResponse", b"\xff" * 40),
    ):
        remote = remote_error(_with_sealed(refusal, trailer), call)
        assert (remote.code, remote.detail) == ("INVALID_ARGUMENT", generic), label
    # The same error at another position of the call does not open either.
    assert remote_error(_with_sealed(refusal, sealed), call, seq=1).detail == generic


# -- the sealing itself ------------------------------------------------------------------------


def _call() -> SealedCall:
    return SealedCall(
        request=common_pb2.SealedRequest(),
        method=Method.INFER.value,
        request_id=b"r" * 16,
        response_key=b"k" * 32,
    )


def test_sealed_error_opens_only_where_it_was_sealed() -> None:
    call = _call()

    def sealed(**kw: object) -> bytes:
        args: dict[str, object] = {
            "method": call.method,
            "request_id": call.request_id,
            "code": "NOT_FOUND",
            "reason": "not-found",
            "message": "model 'x' not found",
            "seq": 0,
        }
        args.update(kw)
        return seal_error(call.response_key, **args).SerializeToString()  # type: ignore[arg-type]

    assert open_error(call, sealed()).message == "model 'x' not found"
    assert open_error(call, sealed(seq=3), seq=3).code == "NOT_FOUND"
    for bad in (
        sealed(seq=1),
        sealed(request_id=b"s" * 16),
        sealed(method=Method.LIST_MODELS.value),
    ):
        with pytest.raises(DecryptionError):
            open_error(call, bad)
    # A response, even a final one, is not an error; an error is not a response.
    response = seal_response(
        call.response_key, method=call.method, request_id=call.request_id, payload=b"ok"
    )
    with pytest.raises(DecryptionError):
        open_error(call, response.SerializeToString())
    with pytest.raises(ProtocolError):
        open_response(call, common_pb2.SealedResponse.FromString(sealed()))


def test_error_messages_are_one_bounded_line() -> None:
    long = "x" * 5000 + "\nsecond line"
    cut = bounded_message(long)
    assert len(cut.encode()) <= MAX_ERROR_MESSAGE_BYTES and cut.endswith("…")
    assert "\n" not in cut
    multibyte = bounded_message("é" * 2000)
    assert len(multibyte.encode()) <= MAX_ERROR_MESSAGE_BYTES
    assert bounded_message("a  short\tline") == "a short line"


def test_every_reason_has_a_short_fixed_clear_message() -> None:
    reasons = {reason for _, _, reason in _TABLE} | {"internal"}
    assert reasons <= set(CLEAR_MESSAGES)
    assert all(len(m.encode()) <= MAX_CLEAR for m in CLEAR_MESSAGES.values())
