"""The durable writer: group commit, fail-stop on ENOSPC/EIO, torn tails, checkpoints on open."""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from veil.enclave.audit import AuditLog, OsFileOps, Signer, TenantLog
from veil.sdk.audit import (
    AuditRecord,
    Checkpoint,
    EventType,
    MerkleTree,
    Outcome,
    hash_leaf,
    verify_checkpoint,
    verify_checkpoint_consistency,
)
from veil.sdk.errors import AuditLogError

NOW = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def _line(n: int, tenant: str = "acme") -> bytes:
    return AuditRecord.create(
        now=NOW,
        event=EventType.INFERENCE,
        outcome=Outcome.SUCCESS,
        tenant=tenant,
        origin="test",
        details={"n": n},
    ).to_line()


def _file_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return data.split(b"\n")[:-1]


class CountingOps(OsFileOps):
    def __init__(self) -> None:
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        time.sleep(0.002)  # a slow disk makes appenders pile up behind one fsync
        super().fsync(fd)


class FailingOps(OsFileOps):
    """Fails the write or fsync number ``fail_at`` (1-based) with ``err``."""

    def __init__(self, op: str, fail_at: int, err: int, gate: threading.Event | None = None):
        self.op, self.fail_at, self.err, self.gate = op, fail_at, err, gate
        self.calls = 0

    def _maybe_fail(self, op: str) -> None:
        if op != self.op:
            return
        self.calls += 1
        if self.calls == self.fail_at:
            if self.gate is not None:
                self.gate.wait(5)
            raise OSError(self.err, f"injected {errno.errorcode[self.err]}")

    def write(self, fd: int, data: bytes) -> int:
        self._maybe_fail("write")
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._maybe_fail("fsync")
        super().fsync(fd)


@pytest.fixture
def tenant_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "acme"


def test_concurrent_appends_share_fsyncs_and_get_unique_indices(tenant_dir: Path) -> None:
    ops = CountingOps()
    log = TenantLog(tenant_dir, file_ops=ops)
    results: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(40):
            line = _line(t * 1000 + i)
            index = log.append_line(line)
            with lock:
                results.append((index, line))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert sorted(i for i, _ in results) == list(range(640))
    lines = _file_lines(tenant_dir / "entries.jsonl")
    assert all(lines[i] == line for i, line in results)
    assert log.root() == MerkleTree(hash_leaf(x) for x in lines).root()
    assert ops.fsyncs < 640 / 2, f"group commit should share fsyncs, used {ops.fsyncs}"


def test_one_fsync_per_record_mode(tenant_dir: Path) -> None:
    ops = CountingOps()
    log = TenantLog(tenant_dir, group_commit=False, file_ops=ops)
    assert [log.append_line(_line(i)) for i in range(5)] == [0, 1, 2, 3, 4]
    log.close()
    assert ops.fsyncs == 5


@pytest.mark.parametrize(("op", "err"), [("write", errno.ENOSPC), ("fsync", errno.EIO)])
def test_io_error_fails_only_the_batch_in_flight(tenant_dir: Path, op: str, err: int) -> None:
    gate = threading.Event()
    log = TenantLog(tenant_dir, file_ops=FailingOps(op, 3, err, gate))
    assert [log.append_line(_line(i)) for i in range(2)] == [0, 1]
    errors: list[BaseException] = []
    indices: dict[int, int] = {}

    def appender(n: int) -> None:
        try:
            indices[n] = log.append_line(_line(n))
        except AuditLogError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(100 + n,)) for n in range(8)]
    threads[0].start()
    time.sleep(0.05)  # the first one is now the batch in flight, blocked in the failing call
    for t in threads[1:]:
        t.start()
    time.sleep(0.05)  # the others are queued behind it
    gate.set()
    for t in threads:
        t.join(5)
    assert len(errors) == 1 and "unavailable" in str(errors[0])
    assert 100 not in indices and sorted(indices.values()) == list(range(2, 9))
    assert log.append_line(_line(999)) == 9
    log.close()
    # the failed record is gone; everything acknowledged is there, in order
    lines = _file_lines(tenant_dir / "entries.jsonl")
    assert lines[:2] == [_line(0), _line(1)] and _line(100) not in lines
    assert all(lines[i] == _line(n) for n, i in indices.items())
    reopened = TenantLog(tenant_dir)
    assert reopened.size == 10
    assert reopened.append_line(_line(2)) == 10
    reopened.close()


def test_io_error_in_one_fsync_per_record_mode(tenant_dir: Path) -> None:
    log = TenantLog(tenant_dir, group_commit=False, file_ops=FailingOps("fsync", 2, errno.EIO))
    assert log.append_line(_line(0)) == 0
    with pytest.raises(AuditLogError, match="unavailable"):
        log.append_line(_line(1))
    assert log.append_line(_line(2)) == 1
    log.close()
    assert _file_lines(tenant_dir / "entries.jsonl") == [_line(0), _line(2)]


def test_torn_tail_is_cut_and_logged(tenant_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = TenantLog(tenant_dir)
    for i in range(3):
        log.append_line(_line(i))
    log.close()
    path = tenant_dir / "entries.jsonl"
    with path.open("ab") as f:
        f.write(_line(3)[:25])
    with caplog.at_level(logging.WARNING, logger="veil.audit"):
        reopened = TenantLog(tenant_dir)
    assert reopened.size == 3
    assert any("torn tail of 25 bytes" in r.getMessage() for r in caplog.records)
    assert _file_lines(path) == [_line(i) for i in range(3)]
    assert reopened.append_line(_line(3)) == 3
    reopened.close()
    assert _file_lines(path) == [_line(i) for i in range(4)]


def test_corrupt_middle_line_refuses_to_open(tenant_dir: Path) -> None:
    tenant_dir.mkdir(parents=True)
    (tenant_dir / "entries.jsonl").write_bytes(_line(0) + b"\n\x00\x00garbage\n" + _line(1) + b"\n")
    with pytest.raises(AuditLogError, match="line 2 is corrupt"):
        TenantLog(tenant_dir)


def _log_with_checkpoint(root: Path, n: int) -> AuditLog:
    log = AuditLog(root, Signer.generate("veil.test"), clock=lambda: NOW, checkpoint_interval=None)
    for i in range(n):
        log.append(AuditRecord.from_line(_line(i)))
    log.checkpoint("acme")
    return log


def test_edited_log_does_not_match_its_checkpoint_on_open(tmp_path: Path) -> None:
    _log_with_checkpoint(tmp_path, 5).close()
    path = tmp_path / "acme" / "entries.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"n":2', b'"n":7'))
    with pytest.raises(AuditLogError, match="records were altered"):
        TenantLog(tmp_path / "acme")


def test_lost_checkpointed_records_refuse_to_open(tmp_path: Path) -> None:
    _log_with_checkpoint(tmp_path, 5).close()
    path = tmp_path / "acme" / "entries.jsonl"
    path.write_bytes(b"".join(x + b"\n" for x in _file_lines(path)[:3]))
    with pytest.raises(AuditLogError, match="checkpointed records were lost"):
        TenantLog(tmp_path / "acme")


def test_background_thread_publishes_checkpoints(tmp_path: Path) -> None:
    signer = Signer.generate("veil.test")
    log = AuditLog(tmp_path, signer, clock=lambda: NOW, checkpoint_interval=0.05)
    try:
        for i in range(4):
            log.append(AuditRecord.from_line(_line(i)))
        path = tmp_path / "acme" / "checkpoint"
        deadline = time.monotonic() + 5
        size = -1
        while time.monotonic() < deadline:
            if path.exists():
                size = verify_checkpoint(path.read_text(), signer.verifier).size
                if size == 4:
                    break
            time.sleep(0.02)
        assert size == 4
        checkpoint = verify_checkpoint(path.read_text(), signer.verifier, origin="veil.test/acme")
        assert checkpoint.root_hash == log.root("acme", 4)
    finally:
        log.close()


def test_tenants_are_isolated_and_names_checked(tmp_path: Path) -> None:
    signer = Signer.generate("veil.test")
    log = AuditLog(tmp_path, signer, clock=lambda: NOW, checkpoint_interval=None)
    try:
        assert log.append(AuditRecord.from_line(_line(0, "acme"))) == 0
        assert log.append(AuditRecord.from_line(_line(0, "beta"))) == 0
        assert log.append(AuditRecord.from_line(_line(1, "acme"))) == 1
        assert log.tenants() == ["acme", "beta"]
        with pytest.raises(AuditLogError):
            log.size("../escape")
    finally:
        log.close()


def test_published_checkpoints_are_append_only_consistent(tmp_path: Path) -> None:
    log = _log_with_checkpoint(tmp_path, 3)
    try:
        old = verify_checkpoint(log.checkpoint("acme"), log.verifier)
        for i in range(3, 11):
            log.append(AuditRecord.from_line(_line(i)))
        new = verify_checkpoint(log.checkpoint("acme"), log.verifier)
        assert (old.size, new.size) == (3, 11)
        verify_checkpoint_consistency(old, new, log.consistency_proof("acme", 3, 11))
        forked = Checkpoint(old.origin, 3, hash_leaf(b"fork"))
        with pytest.raises(AuditLogError, match="old root"):
            verify_checkpoint_consistency(forked, new, log.consistency_proof("acme", 3, 11))
        assert log.checkpoint("acme") == log.checkpoint("acme")  # unchanged tree, same note
    finally:
        log.close()
