"""Connection hygiene against a real server: idle streams, admission caps, malformed bytes,
and uploads held in bounded memory (the rest sealed on disk).

Regression: 16 ``UploadModel`` streams that never sent a message held every worker thread, so
attestation, inference and even the health check timed out until they closed.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import random
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from enclave_support import Served, mlp_model, start
from grpc_health.v1 import health_pb2, health_pb2_grpc

from veil.enclave._capacity import Admission, CallClass, IdleWatchdog
from veil.enclave._errors import Overloaded, StorageFull, TimedOut
from veil.enclave._spool import SPOOL_DIR, UploadBuffer
from veil.enclave.server import _holding
from veil.sdk.errors import DecryptionError
from veil.v1 import attestation_pb2, attestation_pb2_grpc, common_pb2, models_pb2

warnings.filterwarnings("ignore", message="trusting a test root")

IDLE_SECONDS = 1.5
UPLOAD_METHOD = "/veil.v1.ModelService/UploadModel"


def _with_limits(data_dir: Path, **limits: object) -> None:
    lines = [f"{key} = {value!r}" for key, value in limits.items()]
    with (data_dir / "config.toml").open("a") as fh:
        fh.write("\n[limits]\n" + "\n".join(lines) + "\n")


@pytest.fixture
def limited(data_dir: Path) -> Iterator[Served]:
    _with_limits(
        data_dir,
        stream_idle_seconds=IDLE_SECONDS,
        max_concurrent_uploads=4,
        upload_memory_bytes=32768,
    )
    s = start(data_dir)
    try:
        yield s
    finally:
        s.running.stop(grace=None)


def _reason(call: grpc.Call) -> str | None:
    return dict(call.trailing_metadata() or ()).get("veil-reason")


# -- idle streams --------------------------------------------------------------------------------


def test_64_idle_upload_streams_leave_attestation_and_health_served(limited: Served) -> None:
    release = threading.Event()

    def nothing() -> Iterator[bytes]:  # a client that opens the stream and never sends
        release.wait(timeout=60)
        yield from ()

    channels = [grpc.insecure_channel(limited.address) for _ in range(4)]
    try:
        calls = [
            channel.stream_unary(UPLOAD_METHOD).future(nothing(), timeout=60)
            for channel in channels
            for _ in range(16)
        ]
        # The streams beyond the upload cap are refused at once; the admitted ones stay open.
        deadline = time.monotonic() + 10
        while sum(c.done() for c in calls) < 60 and time.monotonic() < deadline:
            time.sleep(0.05)

        started = time.monotonic()
        with limited.client() as client:
            client.attest(force=True)
        assert time.monotonic() - started < 1.0
        with grpc.insecure_channel(limited.address) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING

        # After the idle timeout the admitted streams are cancelled by the server.
        for call in calls:
            assert call.exception(timeout=IDLE_SECONDS * 1.25 + 10) is not None
        codes = Counter(call.code() for call in calls)
        assert set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
        assert codes[grpc.StatusCode.CANCELLED] >= 4
        assert all(
            _reason(c) == "overloaded"
            for c in calls
            if c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    finally:
        release.set()
        for channel in channels:
            channel.close()

    # Upload capacity is back.
    deadline = time.monotonic() + 5
    while limited.running.admission.held(CallClass.UPLOAD) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert limited.running.admission.held(CallClass.UPLOAD) == 0
    with limited.client() as client:
        assert client.upload_model(mlp_model(), "after-idle").version == 1


def test_idle_stream_after_its_header_is_cancelled_and_recorded(limited: Served) -> None:
    """A stream that sent its (authenticated) header and then nothing fails, recorded."""
    with limited.client() as client:
        enclave = client.attest()
        core = client._core  # the SDK's sans-I/O core: seal a real header, send no chunk
        _sealed, messages = core.upload(enclave, mlp_model(), "stalled", lambda _n: None)
        header = next(iter(messages))
    logged = limited.enclave.audit.size("default")
    release = threading.Event()

    def header_then_nothing() -> Iterator[models_pb2.UploadMessage]:
        yield header
        release.wait(timeout=60)

    channel = grpc.insecure_channel(limited.address)
    try:
        stub = channel.stream_unary(
            UPLOAD_METHOD,
            request_serializer=models_pb2.UploadMessage.SerializeToString,
            response_deserializer=common_pb2.SealedResponse.FromString,
        )
        call = stub.future(header_then_nothing(), timeout=60)
        assert call.exception(timeout=IDLE_SECONDS * 1.25 + 10) is not None
        assert call.code() == grpc.StatusCode.CANCELLED
    finally:
        release.set()
        channel.close()
    deadline = time.monotonic() + 5
    while limited.running.admission.held(CallClass.UPLOAD) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert limited.running.admission.held(CallClass.UPLOAD) == 0
    assert limited.enclave.audit.size("default") == logged + 1  # the failed upload


class _FakeContext:
    """A ServicerContext's ``cancel``: wakes the blocked reader the way gRPC's does."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


def test_watchdog_times_only_the_waits_and_cancels_an_idle_stream() -> None:
    watchdog = IdleWatchdog(1.0)
    context = _FakeContext()
    try:

        def slow_but_steady() -> Iterator[int]:  # 2 s in all, never 1 s without a message
            for i in range(40):
                time.sleep(0.05)
                yield i

        assert list(watchdog.watch(slow_but_steady(), context)) == list(range(40))  # type: ignore[arg-type]
        assert not context.cancelled.is_set()

        def one_then_silence() -> Iterator[int]:
            yield 1
            if not context.cancelled.wait(timeout=30):
                return
            raise grpc.RpcError()  # what gRPC's request iterator raises once cancelled

        watched = watchdog.watch(one_then_silence(), context)  # type: ignore[arg-type]
        assert next(watched) == 1
        time.sleep(1.5)  # the handler works for longer than the idle limit: not counted
        started = time.monotonic()
        with pytest.raises(TimedOut):
            next(watched)
        assert time.monotonic() - started < 10
        assert context.cancelled.is_set()
    finally:
        watchdog.close()


def test_admission_refuses_at_once_when_full_and_never_caps_attestation() -> None:
    admission = Admission({CallClass.UPLOAD: 2, CallClass.INFERENCE: 1})
    assert admission.workers == 3 + 8
    uploads = [admission.enter(CallClass.UPLOAD) for _ in range(2)]
    with pytest.raises(Overloaded):
        admission.enter(CallClass.UPLOAD)
    admission.enter(CallClass.INFERENCE)  # other classes have their own slots
    opened = [admission.enter(CallClass.OPEN) for _ in range(100)]
    uploads[0].release()
    uploads[0].release()  # idempotent
    assert admission.held(CallClass.UPLOAD) == 1
    admission.enter(CallClass.UPLOAD)
    for slot in opened:
        slot.release()
    admission.close()
    with pytest.raises(Overloaded):
        admission.enter(CallClass.OPEN)


def test_a_response_stream_gives_its_slot_back_even_if_never_started() -> None:
    admission = Admission({CallClass.TRAINING: 1})
    started = _holding(admission.enter(CallClass.TRAINING), None, lambda: iter([1, 2]))
    assert list(started) == [1, 2]
    assert admission.held(CallClass.TRAINING) == 0
    dropped = _holding(admission.enter(CallClass.TRAINING), None, lambda: iter([1]))
    with pytest.raises(Overloaded):
        admission.enter(CallClass.TRAINING)
    del dropped
    gc.collect()
    assert admission.held(CallClass.TRAINING) == 0


# -- malformed bytes -----------------------------------------------------------------------------


def _junk(parser: type[object], seed: int) -> bytes:
    """Random bytes that do not parse as ``parser`` (random bytes often do: unknown fields)."""
    rng = random.Random(seed)
    while True:
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(8, 200)))
        try:
            parser.FromString(raw)  # type: ignore[attr-defined]
        except Exception:
            return raw


def test_random_bytes_are_invalid_argument_without_traceback(
    limited: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with grpc.insecure_channel(limited.address) as channel:
        for seed in range(5):
            cases = [
                (
                    channel.unary_unary("/veil.v1.ModelService/ListModels"),
                    _junk(common_pb2.SealedRequest, seed),
                ),
                (
                    channel.unary_unary("/veil.v1.AttestationService/GetAttestation"),
                    _junk(attestation_pb2.AttestationRequest, seed),
                ),
                (
                    channel.unary_unary("/grpc.health.v1.Health/Check"),
                    _junk(health_pb2.HealthCheckRequest, seed),
                ),
            ]
            for stub, raw in cases:
                with pytest.raises(grpc.RpcError) as err:
                    stub(raw, timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert _reason(err.value) == "malformed"
            raw = _junk(models_pb2.UploadMessage, seed)
            with pytest.raises(grpc.RpcError) as err:
                channel.stream_unary(UPLOAD_METHOD)(iter([raw]), timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert _reason(err.value) == "malformed"
            with pytest.raises(grpc.RpcError) as err:
                channel.unary_stream("/veil.v1.TrainingService/Train")(
                    _junk(common_pb2.SealedRequest, seed), timeout=10
                ).next()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = attestation_pb2_grpc.AttestationServiceStub(channel)
        assert status.GetAttestation(attestation_pb2.AttestationRequest(nonce=os.urandom(32)))
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text
    assert "deserializing" not in caplog.text
    limited.assert_healthy()


# -- uploads in bounded memory -------------------------------------------------------------------


def _open_spool_files(folder: Path) -> list[Path]:
    """This process's open descriptors on (unlinked) files in ``folder``."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder) + "/"):
            found.append(fd)
    return found


def test_upload_buffer_spills_sealed_to_an_unlinked_file(tmp_path: Path) -> None:
    pieces = [bytes([i]) * 10_000 + f"piece-{i}-plaintext".encode() for i in range(8)]
    buffer = UploadBuffer(tmp_path, memory_bytes=25_000, expected=sum(map(len, pieces)), headroom=0)
    for piece in pieces:
        buffer.append(piece)
    assert len(buffer) == sum(map(len, pieces))
    assert 0 < buffer.spilled <= len(buffer) - 20_000
    assert buffer.getvalue() == b"".join(pieces)
    folder = tmp_path / SPOOL_DIR
    assert not list(folder.iterdir())  # unlinked at once: nothing to leave behind
    [fd] = _open_spool_files(folder)
    on_disk = fd.read_bytes()
    assert len(on_disk) >= buffer.spilled
    assert b"plaintext" not in on_disk and bytes([7]) * 64 not in on_disk
    # Tampering with the spilled bytes is caught, never handed on.
    with open(fd, "r+b") as fh:
        fh.seek(5)
        byte = fh.read(1)
        fh.seek(5)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(DecryptionError):
        buffer.getvalue()
    buffer.close()
    buffer.close()
    assert not _open_spool_files(folder)


def test_upload_buffer_refuses_to_spill_into_the_audit_headroom(tmp_path: Path) -> None:
    buffer = UploadBuffer(tmp_path, memory_bytes=10, expected=1000, headroom=2**62)
    buffer.append(b"x" * 10)
    with pytest.raises(StorageFull):
        buffer.append(b"y" * 100)
    buffer.close()


def test_large_upload_spills_and_registers_the_exact_bytes(limited: Served) -> None:
    model = mlp_model(inputs=64, hidden=512, outputs=8)  # ~150 KB, upload memory is 32 KB
    assert len(model) > 4 * 32768
    with limited.client(chunk_size=16384) as client:
        info = client.upload_model(model, "big")
        assert info.sha256 == hashlib.sha256(model).hexdigest()
        x = np.ones((2, 64), dtype=np.float32)
        assert client.infer("big", {"x": x})["probs"].shape == (2, 8)
    assert not list((limited.data_dir / SPOOL_DIR).iterdir())
    assert not _open_spool_files(limited.data_dir / SPOOL_DIR)
