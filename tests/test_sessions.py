"""Sealing sessions (protocol 1.4): one HPKE step per session, AES-GCM per request.

The table's rules (replay window, idle expiry, bound, binding to tenant and attestation) are
checked on ``SessionTable`` with an injected clock; the wire is checked against a real server
over a raw stub, exactly as a host on the path or a hand-written client sees it; the SDK's use of
sessions (open, reuse, recover when the enclave forgot one) through ``Client``.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from enclave_support import TENANT_KEYS, Served, mlp_model, start

from veil.enclave._replay import ReplayError
from veil.enclave._sessions import REPLAY_WINDOW, SessionTable, UnknownSessionError
from veil.sdk import RemoteReason
from veil.sdk._core import remote_error
from veil.sdk.audit import verify_receipt
from veil.sdk.errors import ProtocolError
from veil.sdk.evidence import AttestedEnclave, to_ms
from veil.sdk.protocol import (
    MAX_SESSION_SEQ,
    SESSION_SECRET_LEN,
    Method,
    SessionKeys,
    session_keys,
    session_request_digest,
)
from veil.sdk.sealing import (
    SealedCall,
    open_response,
    request_digest,
    seal_request,
    seal_session_request,
)
from veil.v1 import common_pb2, inference_pb2, inference_pb2_grpc, models_pb2, models_pb2_grpc

warnings.filterwarnings("ignore", message="trusting a test root")
SECRET = bytes(range(SESSION_SECRET_LEN))
CLAIMS = b"\x11" * 32
X = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)


# -- the table -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _table(clock: Clock, *, max_sessions: int = 8, idle: float = 60.0) -> SessionTable:
    return SessionTable(max_sessions=max_sessions, idle_seconds=idle, clock=clock)


def _open(table: SessionTable, secret: bytes = SECRET, tenant: str = "default") -> SessionKeys:
    return table.open(secret, tenant=tenant, key_id="k", claims_digest=CLAIMS, receipt_version=2)


def test_replay_window_accepts_each_number_once_in_any_order() -> None:
    table = _table(Clock())
    keys = _open(table)
    session = table.find(keys.session_id, tenant="default", claims_digest=CLAIMS, seq=1)
    for seq in (5, 3, 1, 4, 2):
        session.accept(seq)
    for seq in (5, 3, 1, 4, 2):
        with pytest.raises(ReplayError, match="already used"):
            session.accept(seq)
    for seq in (2000, 1500, 978):
        session.accept(seq)
    for seq in (2000, 1500, 978):
        with pytest.raises(ReplayError, match="already used"):
            session.accept(seq)
    for seq in (5, 6):  # behind the window now, used or not
        with pytest.raises(ReplayError, match="behind the replay window"):
            session.accept(seq)
    # 2000 is the highest: 2000 - REPLAY_WINDOW is too old to tell, so it is refused
    with pytest.raises(ReplayError, match="behind the replay window"):
        session.accept(2000 - REPLAY_WINDOW)
    session.accept(2000 - REPLAY_WINDOW + 1)  # just inside, never used


def test_sessions_are_bound_to_tenant_and_attestation_and_numbers_are_bounded() -> None:
    table = _table(Clock())
    keys = _open(table)
    with pytest.raises(UnknownSessionError):
        table.find(keys.session_id, tenant="acme", claims_digest=CLAIMS, seq=1)
    with pytest.raises(UnknownSessionError):
        table.find(keys.session_id, tenant="default", claims_digest=b"\x22" * 32, seq=1)
    with pytest.raises(UnknownSessionError):
        table.find(b"\x00" * 16, tenant="default", claims_digest=CLAIMS, seq=1)
    for seq in (0, MAX_SESSION_SEQ + 1):
        with pytest.raises(ProtocolError, match="request number"):
            table.find(keys.session_id, tenant="default", claims_digest=CLAIMS, seq=seq)
    assert table.find(keys.session_id, tenant="default", claims_digest=CLAIMS, seq=7)


def test_idle_sessions_expire_and_the_table_drops_the_least_recently_used() -> None:
    clock = Clock()
    table = _table(clock, max_sessions=2, idle=60.0)
    first = _open(table, bytes([1]) * 32)
    second = _open(table, bytes([2]) * 32)
    clock.now += 30
    table.find(first.session_id, tenant="default", claims_digest=CLAIMS, seq=1)  # used: fresh
    third = _open(table, bytes([3]) * 32)  # full: drops `second`, the least recently used
    assert len(table) == 2
    with pytest.raises(UnknownSessionError):
        table.find(second.session_id, tenant="default", claims_digest=CLAIMS, seq=1)
    clock.now += 59
    table.find(third.session_id, tenant="default", claims_digest=CLAIMS, seq=1)
    clock.now += 2  # `first` last used 61 s ago
    with pytest.raises(UnknownSessionError):
        table.find(first.session_id, tenant="default", claims_digest=CLAIMS, seq=2)


def test_both_ends_derive_the_same_keys_and_they_depend_on_every_input() -> None:
    keys = session_keys(SECRET, tenant="default", claims_digest=CLAIMS)
    assert keys == session_keys(SECRET, tenant="default", claims_digest=CLAIMS)
    others = [
        session_keys(bytes(32), tenant="default", claims_digest=CLAIMS),
        session_keys(SECRET, tenant="acme", claims_digest=CLAIMS),
        session_keys(SECRET, tenant="default", claims_digest=b"\x22" * 32),
    ]
    for other in others:
        assert other.session_id != keys.session_id
        assert other.request_key != keys.request_key
        assert other.response_key != keys.response_key
    assert len({keys.request_key, keys.response_key}) == 2
    assert SECRET.hex() not in repr(keys) and keys.request_key.hex() not in repr(keys)
    with pytest.raises(ProtocolError):
        session_keys(SECRET[:31], tenant="default", claims_digest=CLAIMS)


# -- the wire, against a real server ---------------------------------------------------------


@pytest.fixture
def wire(served: Served) -> Iterator[tuple[Served, AttestedEnclave, grpc.Channel]]:
    with served.client() as client:
        client.upload_model(mlp_model(), "mlp")
        enclave = client.attest()
    with grpc.insecure_channel(served.address) as channel:
        yield served, enclave, channel


def _infer_payload() -> bytes:
    from veil.sdk.tensors import to_proto

    return inference_pb2.InferRequest(model="mlp", inputs={"x": to_proto(X)}).SerializeToString()


def _open_session(enclave: AttestedEnclave, channel: grpc.Channel) -> SessionKeys:
    call = seal_request(
        enclave,
        method=Method.LIST_MODELS.value,
        tenant="default",
        api_key=TENANT_KEYS["default"],
        payload=models_pb2.ListModelsRequest().SerializeToString(),
        timestamp_ms=to_ms_now(),
        session_secret=SECRET,
    )
    answer = models_pb2_grpc.ModelServiceStub(channel).ListModels(call.request, timeout=30)
    opened = open_response(call, answer)
    assert opened.session_idle_seconds == 600  # the default [limits] session_idle_seconds
    return session_keys(SECRET, tenant="default", claims_digest=enclave.claims_digest)


def to_ms_now() -> int:
    from datetime import UTC, datetime

    return to_ms(datetime.now(UTC))


def _session_call(enclave: AttestedEnclave, keys: SessionKeys, seq: int) -> SealedCall:
    return seal_session_request(
        keys,
        seq,
        method=Method.INFER.value,
        tenant="default",
        payload=_infer_payload(),
        timestamp_ms=to_ms_now(),
        claims_digest=enclave.claims_digest,
    )


def _refusal(channel: grpc.Channel, call: SealedCall) -> tuple[grpc.StatusCode, RemoteReason]:
    with pytest.raises(grpc.RpcError) as caught:
        inference_pb2_grpc.InferenceServiceStub(channel).Infer(call.request, timeout=30)
    error = remote_error(caught.value, call)
    return caught.value.code(), error.reason


def test_session_requests_answer_with_receipts_naming_them_without_a_payload_hash(
    wire: tuple[Served, AttestedEnclave, grpc.Channel],
) -> None:
    _, enclave, channel = wire
    keys = _open_session(enclave, channel)
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    for seq in (1, 3, 2):  # out of order, as concurrent threads of one client send them
        call = _session_call(enclave, keys, seq)
        assert not call.request.sealed.startswith(_infer_payload()[:16])  # nothing in clear
        opened = open_response(call, stub.Infer(call.request, timeout=30))
        answer = inference_pb2.InferResponse.FromString(opened.payload)
        assert set(answer.outputs) == {"logits", "probs"}
        digest = session_request_digest(keys.session_id, seq, call.request.sealed[-16:])
        assert call.digest == digest == request_digest(call.request)
        assert enclave.log_verifier is not None
        receipt = verify_receipt(
            opened.receipt,
            enclave.log_verifier,
            tenant="default",
            request_digest=digest,
            response_digest=hashlib.sha256(opened.payload).hexdigest(),
        )
        assert receipt.request_digest == digest
    # the response is sealed under the session's response key: another key cannot open it
    call = _session_call(enclave, keys, 4)
    other = SealedCall(call.request, call.method, call.request_id, bytes(32))
    with pytest.raises(Exception, match="could not be opened"):
        open_response(other, stub.Infer(call.request, timeout=30))


def test_session_refusals_say_why_in_clear_without_content(
    wire: tuple[Served, AttestedEnclave, grpc.Channel],
) -> None:
    served, enclave, channel = wire
    keys = _open_session(enclave, channel)
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    call = _session_call(enclave, keys, 1)
    stub.Infer(call.request, timeout=30)
    # the same request again (a host replaying it): refused, nothing processed
    assert _refusal(channel, call) == (grpc.StatusCode.ALREADY_EXISTS, RemoteReason.REPLAY)
    # a flipped ciphertext bit does not open, and does not burn its number
    fresh = _session_call(enclave, keys, 2)
    tampered = common_pb2.SealedRequest()
    tampered.CopyFrom(fresh.request)
    tampered.sealed = bytes([tampered.sealed[0] ^ 1]) + tampered.sealed[1:]
    bad = SealedCall(tampered, fresh.method, fresh.request_id, fresh.response_key)
    assert _refusal(channel, bad) == (grpc.StatusCode.INVALID_ARGUMENT, RemoteReason.UNDECRYPTABLE)
    open_response(fresh, stub.Infer(fresh.request, timeout=30))
    # a clear field changed by a host (the tenant) no longer names a session of that tenant
    moved = common_pb2.SealedRequest()
    moved.CopyFrom(_session_call(enclave, keys, 3).request)
    moved.tenant = "acme"
    reason = _refusal(channel, SealedCall(moved, Method.INFER.value, moved.request_id, b""))
    assert reason == (grpc.StatusCode.FAILED_PRECONDITION, RemoteReason.SESSION_EXPIRED)
    # a session this process never opened, and a number out of range
    unknown = _session_call(
        enclave, session_keys(bytes(32), tenant="default", claims_digest=enclave.claims_digest), 1
    )
    assert _refusal(channel, unknown) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        RemoteReason.SESSION_EXPIRED,
    )
    zero = _session_call(enclave, keys, 0)
    assert _refusal(channel, zero) == (grpc.StatusCode.INVALID_ARGUMENT, RemoteReason.MALFORMED)
    served.assert_healthy()


# -- the SDK ---------------------------------------------------------------------------------


def test_client_opens_one_session_and_seals_every_later_call_in_it(served: Served) -> None:
    served.calls.methods.clear()
    with served.client() as client:
        client.upload_model(mlp_model(), "mlp")
        results = [client.infer("mlp", {"x": X})["probs"]]
        session = client._core.session
        assert session is not None
        before = session._seq
        results += [client.infer("mlp", {"x": X})["probs"] for _ in range(4)]
        assert client._core.session is session and session._seq == before + 4
        assert len(served.enclave.gateway.sessions) == 1
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])
    with served.client(sessions=False) as client:
        client.infer("mlp", {"x": X})
        assert client._core.session is None


def test_client_recovers_when_the_enclave_forgot_its_session(
    data_dir: Path,
) -> None:
    with (data_dir / "config.toml").open("a") as config:
        config.write("\n[limits]\nmax_sessions = 1\n")
    served = start(data_dir)
    try:
        with served.client() as first, served.client() as second:
            first.upload_model(mlp_model(), "mlp")
            first.infer("mlp", {"x": X})
            first.infer("mlp", {"x": X})  # in its session
            old = first._core.session
            second.infer("mlp", {"x": X})  # opens a session: the table drops `first`'s
            assert len(served.enclave.gateway.sessions) == 1
            np.testing.assert_array_equal(
                first.infer("mlp", {"x": X})["probs"], second.infer("mlp", {"x": X})["probs"]
            )
            assert first._core.session is not None and first._core.session is not old
            assert len(first.receipts) == 4  # upload + 3 inferences, each with its receipt
    finally:
        served.running.stop(grace=None)


def test_threads_and_coroutines_share_one_client_session_safely(served: Served) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from veil.sdk import AsyncClient

    with served.client() as client:
        client.upload_model(mlp_model(), "mlp")
        expected = client.infer("mlp", {"x": X})["probs"]
        with ThreadPoolExecutor(8) as pool:  # out-of-order numbers inside the replay window
            results = list(pool.map(lambda _: client.infer("mlp", {"x": X})["probs"], range(64)))
        assert all(np.array_equal(r, expected) for r in results)
        assert client._core.session is not None and client._core.session._seq >= 60

    async def gather() -> list[np.ndarray]:
        async with AsyncClient(
            served.address, api_key=TENANT_KEYS["default"], policy=served.policy()
        ) as aclient:
            first = (await aclient.infer("mlp", {"x": X}))["probs"]
            rest = await asyncio.gather(*(aclient.infer("mlp", {"x": X}) for _ in range(16)))
            assert aclient._core.session is not None
            return [first, *(r["probs"] for r in rest)]

    assert all(np.array_equal(r, expected) for r in asyncio.run(gather()))
    assert len(served.enclave.gateway.sessions) <= 3
