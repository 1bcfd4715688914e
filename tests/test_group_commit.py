"""Receipts under load: one signature per group-committed batch (receipt v2), durable first.

v2 receipts of one fsync batch share one signed note over a Merkle tree of the receipts; each
receipt proves its leaf into it. Old clients (receipt_version absent) still get v1 receipts.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import warnings
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from enclave_support import TENANT_KEYS, Served, mlp_model

from veil.enclave.audit import AuditLog, Signer
from veil.enclave.audit._tenant_log import OsFileOps
from veil.sdk import AuditLogError
from veil.sdk._core import ClientCore
from veil.sdk.audit import (
    AuditRecord,
    EventType,
    Outcome,
    Receipt,
    batch_receipts,
    verify_receipt,
)
from veil.sdk.protocol import Method
from veil.sdk.sealing import open_response, request_digest, seal_request
from veil.v1 import inference_pb2, inference_pb2_grpc

warnings.filterwarnings("ignore", message="trusting a test root")
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class SlowFsync(OsFileOps):
    """Real fsyncs that take a while, so concurrent appenders pile up into one batch."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        time.sleep(self.seconds)
        self.fsyncs += 1
        super().fsync(fd)


class CountingSigner(Signer):
    """Counts the notes it signs (checkpoints and receipts)."""

    signed: list[str]

    def sign_note(self, text: str) -> str:
        self.signed.append(text)
        return super().sign_note(text)


def _signer() -> CountingSigner:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signer = CountingSigner("veil-enclave", Ed25519PrivateKey.generate())
    signer.signed = []
    return signer


def _record(tenant: str, n: int) -> AuditRecord:
    return AuditRecord.create(
        now=T0,
        event=EventType.INFERENCE,
        outcome=Outcome.SUCCESS,
        tenant=tenant,
        origin="test",
        details={"n": n},
    )


def _append_concurrently(log: AuditLog, tenants: list[str], per_thread: int, version: int):  # type: ignore[no-untyped-def]
    results: list[tuple[str, int, object]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(tenants))

    def work(thread: int, tenant: str) -> None:
        barrier.wait()
        for i in range(per_thread):
            n = thread * 1000 + i
            appended = log.append_with_receipt(
                _record(tenant, n),
                request_digest=f"req-{n}",
                response_digest=f"resp-{n}",
                receipt_version=version,
            )
            with lock:
                results.append((tenant, n, appended))

    threads = [threading.Thread(target=work, args=(i, t)) for i, t in enumerate(tenants)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_v2_receipts_share_signatures_and_verify(tmp_path: Path) -> None:
    signer = _signer()
    ops = SlowFsync(0.02)
    log = AuditLog(
        tmp_path, signer, clock=lambda: T0, checkpoint_interval=None, file_ops=lambda _: ops
    )
    try:
        results = _append_concurrently(log, ["acme"] * 12, per_thread=4, version=2)
    finally:
        log.close()
    assert len(results) == 48
    batches = [t for t in signer.signed if t.startswith("veil-audit-receipt-batch/v2\n")]
    # Fewer signatures than calls: appenders that waited on one fsync share one batch note.
    assert 1 <= len(batches) < 48
    sizes = [int(t.split("\n")[2]) for t in batches]
    assert sum(sizes) == 48 and max(sizes) > 1
    lines = (tmp_path / "acme" / "entries.jsonl").read_bytes().splitlines()
    indexes = set()
    for tenant, n, appended in results:
        receipt = verify_receipt(
            appended.receipt,
            signer.verifier,
            tenant=tenant,
            request_digest=f"req-{n}",
            response_digest=f"resp-{n}",
        )
        assert receipt.leaf_index == appended.index
        # the receipt's leaf is exactly the durable record line at that index
        assert AuditRecord.from_line(lines[receipt.leaf_index]).details["n"] == n
        indexes.add(receipt.leaf_index)
    assert indexes == set(range(48))


def test_a_batch_never_mixes_tenants(tmp_path: Path) -> None:
    signer = _signer()
    ops = SlowFsync(0.01)
    log = AuditLog(
        tmp_path, signer, clock=lambda: T0, checkpoint_interval=None, file_ops=lambda _: ops
    )
    try:
        results = _append_concurrently(log, ["a", "b"] * 4, per_thread=3, version=2)
    finally:
        log.close()
    for tenant, _, appended in results:
        note_log = appended.receipt.split("\n\n", 1)[1].split("\n")[1]
        assert note_log == f"veil-enclave/{tenant}"
        assert verify_receipt(appended.receipt, signer.verifier).tenant == tenant


def test_v1_receipts_still_signed_one_by_one(tmp_path: Path) -> None:
    signer = _signer()
    log = AuditLog(tmp_path, signer, clock=lambda: T0, checkpoint_interval=None)
    try:
        results = _append_concurrently(log, ["acme"] * 3, per_thread=2, version=1)
    finally:
        log.close()
    for _, n, appended in results:
        assert appended.receipt.startswith("veil-audit-receipt/v1\n")
        verify_receipt(appended.receipt, signer.verifier, request_digest=f"req-{n}")
    assert len([t for t in signer.signed if t.startswith("veil-audit-receipt/v1")]) == 6


def _v2_batch(count: int = 5, prefix: str = "req") -> tuple[Signer, list[Receipt], list[str]]:
    signer = Signer.generate("veil-enclave")
    receipts = [
        Receipt(
            log="veil-enclave/t",
            tenant="t",
            leaf_index=10 + i,
            leaf_hash=bytes([i]) * 32,
            time="2026-01-02T03:04:05.000000Z",
            request_digest=f"{prefix}-{i}",
            response_digest=f"resp-{i}",
        )
        for i in range(count)
    ]
    return signer, receipts, batch_receipts(receipts, signer.sign_note)


def _edit_position(text: str, edit) -> str:  # type: ignore[no-untyped-def]
    header, line, position, rest = text.split("\n", 3)
    obj = json.loads(position)
    edit(obj)
    return "\n".join([header, line, json.dumps(obj, separators=(",", ":")), rest])


def _flip_proof(obj: dict) -> None:  # type: ignore[type-arg]
    first = bytearray(base64.b64decode(obj["proof"][0]))
    first[0] ^= 1
    obj["proof"][0] = base64.b64encode(bytes(first)).decode()


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda t: t.replace('"req-2"', '"req-9"'), id="request-digest"),
        pytest.param(lambda t: t.replace('"leaf_index":12', '"leaf_index":13'), id="leaf-index"),
        pytest.param(
            lambda t: _edit_position(t, lambda o: o.update(batch_index=3)), id="batch-index"
        ),
        pytest.param(lambda t: _edit_position(t, _flip_proof), id="proof-hash"),
        pytest.param(lambda t: _edit_position(t, lambda o: o["proof"].pop()), id="short-proof"),
        pytest.param(lambda t: t.replace("\n5\n", "\n4\n", 1), id="batch-size"),
        pytest.param(
            lambda t: t.replace("veil-audit-receipt/v2\n", "veil-audit-receipt/v1\n"), id="header"
        ),
        pytest.param(lambda t: t.split("\n\n", 1)[0], id="no-note"),
    ],
)
def test_tampered_v2_receipt_is_refused(tamper) -> None:  # type: ignore[no-untyped-def]
    signer, _, texts = _v2_batch()
    verify_receipt(texts[2], signer.verifier, request_digest="req-2")
    with pytest.raises(AuditLogError):
        verify_receipt(tamper(texts[2]), signer.verifier, request_digest="req-2")


def test_v2_receipt_under_another_key_or_moved_between_batches_is_refused() -> None:
    signer, _, texts = _v2_batch()
    other, _, other_texts = _v2_batch(prefix="other")
    with pytest.raises(AuditLogError):
        verify_receipt(texts[0], other.verifier)
    # a receipt line grafted onto another batch's proof and note does not verify
    line = texts[1].split("\n")[1]
    parts = other_texts[1].split("\n", 2)
    grafted = "\n".join([parts[0], line, parts[2]])
    with pytest.raises(AuditLogError):
        verify_receipt(grafted, other.verifier)
    verify_receipt(texts[1], signer.verifier)


def test_client_asks_for_v2_and_an_old_client_still_gets_v1(served: Served) -> None:
    x = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
    with served.client() as client:
        client.upload_model(mlp_model(), "m")
        client.infer("m", {"x": x})
        assert client.receipts[-1].leaf_index == 1
        attested = client.attest()
    core = ClientCore(tenant="default", api_key=TENANT_KEYS["default"], policy=served.policy())
    message = core.infer_request("m", {"x": x}, None)
    log_key = attested.log_verifier
    assert log_key is not None
    with grpc.insecure_channel(served.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        for version, header in ((1, "veil-audit-receipt/v1\n"), (2, "veil-audit-receipt/v2\n")):
            call = seal_request(
                attested,
                method=Method.INFER.value,
                tenant="default",
                api_key=TENANT_KEYS["default"],
                payload=message.SerializeToString(),
                timestamp_ms=int(time.time() * 1000),
                receipt_version=version,
            )
            opened = open_response(call, stub.Infer(call.request, timeout=30))
            assert opened.receipt.startswith(header)
            receipt = verify_receipt(
                opened.receipt,
                log_key,
                tenant="default",
                request_digest=request_digest(call.request),
            )
            inference_pb2.InferResponse.FromString(opened.payload)
            assert receipt.model_digest is not None


def test_concurrent_clients_get_distinct_verified_receipts(served: Served) -> None:
    x = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    with served.client() as client:
        client.upload_model(mlp_model(), "m")
    seen: Counter[int] = Counter()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with served.client() as client:
                for _ in range(6):
                    client.infer("m", {"x": x})
                for receipt in client.receipts:
                    seen[receipt.leaf_index] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == 36 and set(seen.values()) == {1}
    assert os.path.getsize(served.data_dir / "audit" / "default" / "entries.jsonl") > 0
