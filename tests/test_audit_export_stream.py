"""Audit export of any size: a sealed, chunked server stream; `--since INDEX` continues an export.

Regression tests for issue 10 item 8: the export used to be one gRPC message, so it failed with
RESOURCE_EXHAUSTED once the log passed the message limit (~65 MiB at the defaults).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from enclave_support import TENANT_KEYS, Served, start, write_config

from veil.enclave.audit import AuditLog, Signer, TenantLog
from veil.enclave.audit import _tenant_log as tenant_log_module
from veil.sdk import AuditLogError, RemoteError
from veil.sdk._audit_client import ExportReceiver
from veil.sdk._core import ClientCore
from veil.sdk.audit import AuditRecord, EventType, Outcome, verify_export
from veil.sdk.errors import ProtocolError
from veil.sdk.protocol import Method
from veil.v1 import audit_pb2, audit_pb2_grpc

warnings.filterwarnings("ignore", message="trusting a test root")
T0 = datetime(2026, 11, 1, tzinfo=UTC)
SERVER_MAX_MESSAGE = 128 * 1024  # the gRPC limit is this plus 1 MiB for the envelope
RECORDS = 4000


def _fill(audit_dir: Path, tenant: str, n: int) -> None:
    """n records in the tenant's log before the service starts (shared fsyncs: 16 threads)."""
    audit = AuditLog(audit_dir, Signer.generate("seed"), clock=lambda: T0, checkpoint_interval=None)

    def worker(t: int) -> None:
        for i in range(t, n, 16):
            audit.append(
                AuditRecord.create(
                    now=T0 + timedelta(seconds=i),
                    event=EventType.INFERENCE,
                    outcome=Outcome.SUCCESS,
                    tenant=tenant,
                    origin="ipv4:10.0.0.1:1",
                    key_id="k",
                    resource="m@1",
                    details={"n": i, "pad": "x" * 200},
                )
            )

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    audit.close()


@pytest.fixture
def big(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A service with a small message limit and a log several times larger than it."""
    write_config(data_dir, extra_server=f"max_message_bytes = {SERVER_MAX_MESSAGE}")
    _fill(data_dir / "audit", "default", RECORDS)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the server stages exports
    served = start(data_dir)
    try:
        yield served
    finally:
        served.running.stop(grace=None)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veil.sdk.cli", "audit", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_export_larger_than_the_message_limit_streams_and_verifies(
    big: Served, tmp_path: Path
) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(big.root_pem)
    key = tmp_path / "key"
    key.write_text(TENANT_KEYS["default"])
    out = tmp_path / "export"
    common = ["--target", big.address, "--trust-root", str(root), "--api-key-file", str(key)]
    exported = _cli("export", *common, "--out", str(out), "--format", "ocsf", "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert total > SERVER_MAX_MESSAGE + (1 << 20), "the export must exceed one message"
    assert len((out / "entries.jsonl").read_bytes().splitlines()) == RECORDS
    assert len((out / "ocsf.jsonl").read_bytes().splitlines()) == RECORDS
    verified = _cli("verify", str(out), "--trust-root", str(root), "--json")
    assert verified.returncode == 0, verified.stderr
    doc = json.loads(verified.stdout)
    assert doc["verified"] is True and doc["full"] is True and doc["entries"] == RECORDS
    assert f"--since {RECORDS}" in exported.stdout  # how to continue it later
    assert not any(Path(tempfile.gettempdir()).iterdir()), "export staging left behind"


def test_unary_export_is_refused_precisely_when_too_large(big: Served) -> None:
    with big.client() as client, pytest.raises(RemoteError) as err:
        client._unary(
            Method.AUDIT_EXPORT,
            audit_pb2.ExportRequest(),
            audit_pb2.ExportResponse(),
        )
    assert err.value.code == "RESOURCE_EXHAUSTED" and err.value.reason == "too-large"
    assert "ExportAuditStream" in err.value.detail


def test_small_client_message_limit_is_enough(big: Served, tmp_path: Path) -> None:
    with big.client(max_message_bytes=2 * 1024 * 1024) as client:
        out = client.export_audit(tmp_path / "export")
        assert client.receipts[-1].tenant == "default"
    result = verify_export(out, expect_vkey=big.enclave.audit.vkey)
    assert result.entry_count == RECORDS


def test_since_index_exports_only_what_was_added(served: Served, tmp_path: Path) -> None:
    with served.client() as client:
        for _ in range(3):
            client.list_models()
        first = client.export_audit(tmp_path / "first")
        size = verify_export(first, expect_vkey=served.enclave.audit.vkey).checkpoint.size
        for _ in range(4):
            client.list_models()
        more = client.export_audit(tmp_path / "more", since=size)
    result = verify_export(more, expect_vkey=served.enclave.audit.vkey)
    assert not result.full and result.checkpoint.size > size
    lines = (more / "entries.jsonl").read_bytes().splitlines()
    proofs = [json.loads(x) for x in (more / "proofs.jsonl").read_text().splitlines()]
    assert [p["index"] for p in proofs] == list(range(size, result.checkpoint.size))
    assert len(lines) == result.checkpoint.size - size
    events = [AuditRecord.from_line(x).event for x in lines]
    assert events[0] is EventType.AUDIT_EXPORT  # the first export's own record comes first
    assert events.count(EventType.MODEL_LISTED) == 4
    old = (first / "entries.jsonl").read_bytes().splitlines()
    assert not set(old) & set(lines)


def test_abandoned_stream_removes_its_staging(big: Served, tmp_path: Path) -> None:
    core = ClientCore(tenant="default", api_key=TENANT_KEYS["default"], policy=big.policy())
    with big.client() as client:
        enclave = client.attest()
    call = core.seal(enclave, Method.AUDIT_EXPORT_STREAM, audit_pb2.ExportRequest())
    with grpc.insecure_channel(big.address) as channel:
        stream = audit_pb2_grpc.AuditServiceStub(channel).ExportAuditStream(
            call.request, timeout=60
        )
        first = next(stream)
        assert not first.final and first.seq == 0
        part = core.open(enclave, call, first, audit_pb2.ExportStreamMessage(), stream=True)
        assert len(part.chunk.data) <= SERVER_MAX_MESSAGE
        stream.cancel()
    deadline = time.monotonic() + 10
    while any(Path(tempfile.gettempdir()).iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(tempfile.gettempdir()).iterdir()), "staging kept after the client left"
    big.assert_healthy()


# -- the receiver, against a hostile or broken stream ---------------------------------------


def _chunk(name: str, offset: int, data: bytes) -> audit_pb2.ExportStreamMessage:
    return audit_pb2.ExportStreamMessage(
        chunk=audit_pb2.ExportChunk(name=name, offset=offset, data=data)
    )


def _summary(*files: tuple[str, bytes]) -> audit_pb2.ExportStreamMessage:
    return audit_pb2.ExportStreamMessage(
        summary=audit_pb2.ExportSummary(
            files=[
                audit_pb2.ExportFile(name=n, size=len(d), sha256=hashlib.sha256(d).digest())
                for n, d in files
            ]
        )
    )


def test_receiver_writes_files_as_chunks_arrive(tmp_path: Path) -> None:
    receiver = ExportReceiver(tmp_path / "out")
    receiver.add(_chunk("entries.jsonl", 0, b"ab"), final=False)
    assert (tmp_path / "out" / "entries.jsonl").exists()
    receiver.add(_chunk("entries.jsonl", 2, b"cd"), final=False)
    receiver.add(_summary(("entries.jsonl", b"abcd"), ("proofs.jsonl", b"")), final=True)
    assert (tmp_path / "out" / "entries.jsonl").read_bytes() == b"abcd"
    assert (tmp_path / "out" / "proofs.jsonl").read_bytes() == b""


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([(_chunk("a", 0, b"x"), False), (_chunk("a", 5, b"y"), False)], "expected 1"),
        (
            [
                (_chunk("a", 0, b"x"), False),
                (_chunk("b", 0, b"y"), False),
                (_chunk("a", 1, b"z"), False),
            ],
            "two runs",
        ),
        ([(_chunk("../escape", 0, b"x"), False)], "leaves the export directory"),
        ([(_chunk("a", 0, b"x"), False), (_summary(("a", b"y")), True)], "does not match"),
        ([(_chunk("a", 0, b"x"), False), (_summary(), True)], "not in the signed summary"),
        ([(_summary(("a", b"x")), True)], "never arrived"),
        ([(_chunk("a", 0, b"x"), True)], "exactly one summary"),
        ([(_summary(), False)], "exactly one summary"),
    ],
)
def test_receiver_refuses_broken_streams(
    tmp_path: Path, messages: list[tuple[audit_pb2.ExportStreamMessage, bool]], error: str
) -> None:
    out = tmp_path / "out"
    receiver = ExportReceiver(out)
    with pytest.raises((AuditLogError, ProtocolError), match=error):
        for message, final in messages:
            receiver.add(message, final=final)
    receiver.abort()
    assert not [p for p in out.rglob("*") if p.is_file()]
    assert not (tmp_path / "escape").exists()


def test_stream_without_summary_is_incomplete(tmp_path: Path) -> None:
    receiver = ExportReceiver(tmp_path / "out")
    receiver.add(_chunk("a", 0, b"x"), final=False)
    with pytest.raises(ProtocolError, match="without its summary"):
        receiver.finish(None)  # type: ignore[arg-type]


def test_lines_are_read_in_bounded_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``iter_lines`` never reads the whole log at once: tiny read size, same lines."""
    log = TenantLog(tmp_path / "acme")
    lines = [b'{"n":%d,"pad":"%s"}' % (i, b"y" * (i % 50)) for i in range(300)]
    for line in lines:
        log.append_line(line)
    monkeypatch.setattr(tenant_log_module, "_READ_CHUNK", 7)
    reads: list[int] = []
    real_pread = tenant_log_module.os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        reads.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(tenant_log_module.os, "pread", pread)
    assert list(log.iter_lines(300)) == lines
    assert list(log.iter_lines(120, 100)) == lines[100:120]
    assert max(reads) == 7
    log.close()


def test_stream_failure_travels_sealed_and_leaves_nothing(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "export"
    with served.client() as client, pytest.raises(RemoteError) as err:
        client.export_audit(out, formats=["xml"])
    assert err.value.code == "INVALID_ARGUMENT"
    assert "unknown export format 'xml'" in err.value.detail  # opened from the sealed trailer
    assert not any(out.iterdir())
