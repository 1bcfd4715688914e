"""Key-less callers cannot grow a tenant's log; the system log's failure does not stop attestation.

Regression tests for issue 10 item 7: each wrong-key call naming a tenant used to append an
fsynced record to that tenant's log, and each attestation one to the system log.
"""

from __future__ import annotations

import errno
import time
import warnings

import pytest
from enclave_support import Served

from veil.enclave._config import SYSTEM_LOG
from veil.enclave.audit import OsFileOps, TenantLog
from veil.sdk._core import ClientCore
from veil.sdk.audit import AuditRecord, EventType, Outcome, verify_checkpoint
from veil.sdk.protocol import Method
from veil.v1 import models_pb2

warnings.filterwarnings("ignore", message="trusting a test root")
FLOOD = 5000


def _records(served: Served, tenant: str) -> list[AuditRecord]:
    path = served.data_dir / "audit" / tenant / "entries.jsonl"
    if not path.exists():
        return []
    return [AuditRecord.from_line(line) for line in path.read_bytes().splitlines()]


def _wrong_key_requests(
    served: Served, tenant: str, n: int, method: Method = Method.LIST_MODELS
) -> list[object]:
    core = ClientCore(tenant=tenant, api_key="not-the-key-0123456789", policy=served.policy())
    with served.client() as client:
        enclave = client.attest()
    return [core.seal(enclave, method, models_pb2.ListModelsRequest()).request for _ in range(n)]


def test_a_flood_of_wrong_keys_adds_one_aggregated_record(served: Served) -> None:
    enclave = served.enclave
    requests = _wrong_key_requests(served, "acme", FLOOD)
    before = enclave.audit.size("acme")
    started = time.monotonic()
    for i, request in enumerate(requests):
        with pytest.raises(Exception, match="invalid API key"):
            enclave.open_request(request, Method.LIST_MODELS.value, f"ipv4:10.0.0.{i % 7}:1")  # type: ignore[arg-type]
    assert time.monotonic() - started < 120  # bounded: no fsync per call
    with (  # and through the real server, end to end
        served.client("acme", api_key="wrong-key-0123456789") as client,
        pytest.raises(Exception, match="UNAUTHENTICATED"),
    ):
        client.list_models()
    assert enclave.audit.size("acme") == before, "a refused call wrote to the tenant's log"
    assert enclave.tally.flush() >= 1
    added = _records(served, "acme")[before:]
    assert len(added) <= 3
    [record] = [r for r in added if r.event is EventType.AUTH_FAILURE]
    assert record.outcome is Outcome.DENIED
    assert record.resource == Method.LIST_MODELS.value
    assert record.details["aggregated"] is True
    assert record.details["count"] == FLOOD + 1
    assert record.details["distinct_peers"] == 8  # seven fake peers and the real client
    assert record.details["first_time"] <= record.details["last_time"]
    assert enclave.tally.flush() == 0  # nothing counted twice


def test_unknown_tenant_names_are_counted_never_written(served: Served) -> None:
    enclave = served.enclave
    names = [f"victim-{i}" for i in range(20)]
    for name in names:
        for request in _wrong_key_requests(served, name, 2, Method.INFER):
            with pytest.raises(Exception, match="invalid API key"):
                enclave.open_request(request, Method.INFER.value, "ipv4:10.0.0.1:1")  # type: ignore[arg-type]
    enclave.tally.flush()
    raw = (served.data_dir / "audit" / SYSTEM_LOG / "entries.jsonl").read_bytes()
    assert not any(name.encode() in raw for name in names)
    [record] = [
        r
        for r in _records(served, SYSTEM_LOG)
        if r.event is EventType.AUTH_FAILURE and r.resource == Method.INFER.value
    ]
    assert record.details["count"] == 40
    assert record.details["distinct_claims"] == 20
    assert record.details["distinct_peers"] == 1


def test_attestations_are_aggregated(served: Served) -> None:
    for _ in range(30):
        with served.client() as client:
            client.attest(force=True)
    before = served.enclave.audit.size(SYSTEM_LOG)
    served.enclave.tally.flush()
    served_records = [
        r for r in _records(served, SYSTEM_LOG)[before:] if r.event is EventType.ATTESTATION_SERVED
    ]
    assert sum(int(r.details["count"]) for r in served_records) >= 30  # type: ignore[call-overload]
    assert len(served_records) <= 2  # one per key epoch


class _BrokenDisk(OsFileOps):
    broken = True

    def write(self, fd: int, data: bytes) -> int:
        if self.broken:
            raise OSError(errno.ENOSPC, "injected ENOSPC")
        return super().write(fd, data)


def test_attestation_and_reads_survive_a_failing_system_log(served: Served) -> None:
    """Before: once the system log failed, attestation failed for everyone, until a restart."""
    disk = _BrokenDisk()
    served.enclave.audit.reserve.release()
    served.enclave.audit._tenant(SYSTEM_LOG)._ops = disk  # the system log's disk is full
    with served.client() as client:
        client.attest(force=True)
        client.list_models()  # a tenant's receipted call does not need the system log
    served.enclave.tally.flush()  # cannot write: kept, no exception
    assert served.enclave.tally.pending() >= 1
    disk.broken = False
    assert served.enclave.tally.flush() >= 1
    assert served.enclave.tally.pending() == 0
    assert any(r.event is EventType.ATTESTATION_SERVED for r in _records(served, SYSTEM_LOG))


def test_tenant_log_failure_fails_that_call_and_heals(served: Served) -> None:
    disk = _BrokenDisk()
    served.enclave.audit.reserve.release()
    served.enclave.audit._tenant("default")._ops = disk
    with served.client() as client:
        with pytest.raises(Exception, match="UNAVAILABLE"):
            client.list_models()  # receipted: durable before answered, so it fails
        with served.client("acme") as other:
            other.list_models()  # another tenant is untouched
        disk.broken = False
        client.list_models()  # healed without a restart
        client.prove_receipt(client.receipts[-1])


def test_close_never_raises_and_closes_every_log(served: Served) -> None:
    with served.client("acme") as client:
        client.list_models()
    served.enclave.audit._tenant(SYSTEM_LOG)._ops = _BrokenDisk()
    served.enclave.audit.reserve.release()
    served.running.stop(grace=None)  # the stop record cannot be written: logged, not raised
    served.enclave.close()  # a second close is a no-op
    acme = _records(served, "acme")
    assert acme and acme[-1].event is EventType.MODEL_LISTED
    note = (served.data_dir / "audit" / "acme" / "checkpoint").read_text()
    assert verify_checkpoint(note, served.enclave.audit.verifier).size == len(acme)  # final one
    reopened = TenantLog(served.data_dir / "audit" / "acme")
    assert reopened.size == len(acme)
    reopened.close()
    system = (served.data_dir / "audit" / SYSTEM_LOG / "entries.jsonl").read_bytes()
    assert system.endswith(b"\n") and b"service_stop" not in system  # cut back, nothing torn
