"""Disk faults heal: a failed audit append fails that call only, and the log resumes by itself.

Regression tests for issue 10 item 5: before, one ENOSPC/EIO stopped a tenant's log until a
restart. The faults are injected through ``FileOps`` for a while, then the "disk" recovers.
"""

from __future__ import annotations

import errno
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from veil.enclave.audit import AuditLog, OsFileOps, Signer, TenantLog
from veil.sdk.audit import AuditRecord, EventType, MerkleTree, Outcome, hash_leaf, verify_checkpoint
from veil.sdk.audit._merkle import verify_inclusion
from veil.sdk.errors import AuditLogError

T0 = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def _record(i: int, tenant: str = "acme") -> AuditRecord:
    return AuditRecord.create(
        now=T0,
        event=EventType.INFERENCE,
        outcome=Outcome.SUCCESS,
        tenant=tenant,
        origin="ipv4:10.0.0.1",
        details={"n": i},
    )


class FlakyDisk(OsFileOps):
    """Raises ``err`` from the named calls while ``broken`` is set, like a full or failing disk."""

    def __init__(self, *ops: str, err: int = errno.ENOSPC) -> None:
        self.ops, self.err = set(ops), err
        self.broken = threading.Event()
        self.failures = 0

    def _check(self, op: str) -> None:
        if op in self.ops and self.broken.is_set():
            self.failures += 1
            raise OSError(self.err, f"injected {errno.errorcode[self.err]}")

    def write(self, fd: int, data: bytes) -> int:
        self._check("write")
        if "write-then-fail" in self.ops and self.broken.is_set():
            super().write(fd, data)  # the bytes reach the page cache, then the call fails
            self.failures += 1
            raise OSError(self.err, "injected")
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self._check("fsync")
        super().fsync(fd)

    def truncate(self, fd: int, length: int) -> None:
        self._check("truncate")
        super().truncate(fd, length)


def _audit(tmp_path: Path, disk: FlakyDisk, **kw: object) -> AuditLog:
    return AuditLog(
        tmp_path / "audit",
        Signer.generate("veil.test"),
        clock=lambda: T0,
        checkpoint_interval=None,
        file_ops=lambda tenant: disk if tenant == "acme" else OsFileOps(),
        **kw,  # type: ignore[arg-type]
    )


def _file_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "unacknowledged bytes left in the file"
    return data.split(b"\n")[:-1]


def _run_with_outage(audit: AuditLog, disk: FlakyDisk, n: int = 30) -> list[bytes]:
    """Append n records, with the disk broken for records 10..19; return the acknowledged lines."""
    acked: list[bytes] = []
    for i in range(n):
        if i == 10:
            disk.broken.set()
        if i == 20:
            disk.broken.clear()
        record = _record(i)
        try:
            index = audit.append(record)
        except AuditLogError as exc:
            assert 10 <= i < 20, f"append {i} failed with the disk healthy: {exc}"
            assert "unavailable" in str(exc)
            continue
        assert not 10 <= i < 20, f"append {i} was acknowledged while the disk was failing"
        assert index == len(acked)
        acked.append(record.to_line())
    return acked


def _assert_log_is_exactly(audit: AuditLog, tmp_path: Path, acked: list[bytes]) -> None:
    path = tmp_path / "audit" / "acme" / "entries.jsonl"
    assert _file_lines(path) == acked
    assert audit.size("acme") == len(acked)
    assert audit.root("acme") == MerkleTree(hash_leaf(x) for x in acked).root()
    checkpoint = verify_checkpoint(
        audit.checkpoint("acme"), audit.verifier, origin=audit.origin("acme")
    )
    assert checkpoint.size == len(acked)
    audit.close()
    reopened = TenantLog(tmp_path / "audit" / "acme")  # checks the file against the checkpoint
    assert reopened.size == len(acked)
    assert reopened.root() == checkpoint.root_hash
    reopened.close()


@pytest.mark.parametrize(
    ("ops", "err"),
    [
        (("write",), errno.ENOSPC),
        (("fsync",), errno.EIO),
        (("write-then-fail",), errno.ENOSPC),
        (("fsync",), errno.ENOSPC),
    ],
)
def test_log_resumes_after_the_disk_recovers(
    tmp_path: Path, ops: tuple[str, ...], err: int
) -> None:
    disk = FlakyDisk(*ops, err=err)
    audit = _audit(tmp_path, disk)
    acked = _run_with_outage(audit, disk)
    assert disk.failures >= 10
    assert len(acked) == 20
    _assert_log_is_exactly(audit, tmp_path, acked)


def test_failed_fsync_is_never_acknowledged_and_its_bytes_are_cut(tmp_path: Path) -> None:
    """After a failed fsync the page cache is unknown: the bytes written are cut off."""
    disk = FlakyDisk("fsync", err=errno.EIO)
    audit = _audit(tmp_path, disk)
    audit.append(_record(0))
    disk.broken.set()
    with pytest.raises(AuditLogError, match="unavailable"):
        audit.append(_record(1))
    path = tmp_path / "audit" / "acme" / "entries.jsonl"
    assert _file_lines(path) == [_record(0).to_line()]  # cut back at once
    disk.broken.clear()
    assert audit.append(_record(2)) == 1
    _assert_log_is_exactly(audit, tmp_path, [_record(0).to_line(), _record(2).to_line()])


def test_when_the_cut_back_fails_the_next_append_cuts_first(tmp_path: Path) -> None:
    """Never acknowledge a line that sits after garbage: a failed cut-back is redone first."""
    disk = FlakyDisk("write-then-fail", "truncate", err=errno.EIO)
    audit = _audit(tmp_path, disk)
    audit.append(_record(0))
    disk.broken.set()
    for i in (1, 2):
        with pytest.raises(AuditLogError):
            audit.append(_record(i))
    path = tmp_path / "audit" / "acme" / "entries.jsonl"
    assert len(path.read_bytes()) > len(_record(0).to_line()) + 1  # garbage is there for now
    disk.ops = {"truncate"}  # writes work again, but cutting still fails: nothing may be acked
    with pytest.raises(AuditLogError):
        audit.append(_record(3))
    disk.broken.clear()
    assert audit.append(_record(4)) == 1
    _assert_log_is_exactly(audit, tmp_path, [_record(0).to_line(), _record(4).to_line()])


def test_reads_work_while_appends_fail_and_other_tenants_are_untouched(tmp_path: Path) -> None:
    disk = FlakyDisk("write", err=errno.ENOSPC)
    audit = _audit(tmp_path, disk)
    for i in range(5):
        audit.append(_record(i))
    disk.broken.set()
    with pytest.raises(AuditLogError):
        audit.append(_record(5))
    # the failed tenant's reads
    assert audit.size("acme") == 5
    proof = audit.inclusion_proof("acme", 2, 5)
    verify_inclusion(audit.leaf_hash("acme", 2), 2, 5, proof, audit.root("acme", 5))
    assert verify_checkpoint(audit.checkpoint("acme"), audit.verifier).size == 5
    result = audit.export("acme", tmp_path / "export")
    assert result.entry_count == 5
    # another tenant writes on
    assert [audit.append(_record(i, tenant="beta")) for i in range(3)] == [0, 1, 2]
    disk.broken.clear()
    assert audit.append(_record(6)) == 5
    audit.close()


def test_concurrent_appenders_through_an_outage(tmp_path: Path) -> None:
    """Group commit under faults: every acknowledged record is there once, nothing else is."""
    disk = FlakyDisk("fsync", err=errno.EIO)
    audit = _audit(tmp_path, disk)
    acked: dict[int, bytes] = {}
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(30):
            record = _record(t * 1000 + i)
            try:
                index = audit.append(record)
            except AuditLogError:
                continue
            with lock:
                acked[index] = record.to_line()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for _ in range(5):  # flap the disk while they append
        disk.broken.set()
        threading.Event().wait(0.01)
        disk.broken.clear()
        threading.Event().wait(0.01)
    for t in threads:
        t.join(30)
    assert sorted(acked) == list(range(len(acked)))
    _assert_log_is_exactly(audit, tmp_path, [acked[i] for i in range(len(acked))])


def test_headroom_reserve_is_released_on_disk_full_and_recreated(tmp_path: Path) -> None:
    """The append that hits ENOSPC is written into the reserve's space, not refused."""
    reserve = tmp_path / "audit" / ".headroom"

    class FullUntilReleased(OsFileOps):
        def write(self, fd: int, data: bytes) -> int:
            if reserve.exists():
                raise OSError(errno.ENOSPC, "injected ENOSPC")
            return super().write(fd, data)

    audit = AuditLog(
        tmp_path / "audit",
        Signer.generate("veil.test"),
        clock=lambda: T0,
        checkpoint_interval=None,
        file_ops=lambda tenant: FullUntilReleased(),
        headroom_bytes=1 << 20,
    )
    assert reserve.stat().st_size == 1 << 20
    assert audit.append(_record(0)) == 0  # failed once, released the reserve, retried
    assert not reserve.exists()
    assert audit.append(_record(1)) == 1
    assert audit.reserve.ensure() and reserve.stat().st_size == 1 << 20
    audit.close()


def test_close_closes_every_log_and_never_raises(tmp_path: Path) -> None:
    disk = FlakyDisk("write", "fsync", "truncate", err=errno.EIO)
    audit = _audit(tmp_path, disk)
    audit.append(_record(0))
    audit.append(_record(0, tenant="beta"))
    disk.broken.set()
    with pytest.raises(AuditLogError):
        audit.append(_record(1))
    audit.close()  # must not raise although acme cannot even cut back
    disk.broken.clear()
    for tenant in ("acme", "beta"):
        log = TenantLog(tmp_path / "audit" / tenant)
        assert log.size == 1
        log.close()


def test_reserve_waits_for_room_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from veil.enclave.audit import HeadroomReserve
    from veil.enclave.audit import _reserve as reserve_module

    reserve = HeadroomReserve(tmp_path / ".headroom", 1 << 20)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "injected ENOSPC")

    monkeypatch.setattr(reserve_module.os, "posix_fallocate", full)
    assert not reserve.ensure() and not reserve.ensure()
    assert not reserve.path.exists() and not reserve.held
    monkeypatch.undo()
    assert reserve.ensure() and reserve.held
    assert reserve.release() and not reserve.release()
