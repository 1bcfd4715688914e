"""Group commit without a writer thread: the appender that finds the log idle writes and fsyncs.

A lone appender commits its own line in its own thread (no hand-off); concurrent appenders queue
and the first of each batch leads it: one write, one fsync and one ``on_commit`` per batch, on
that appender's thread, batches in index order, each appender answered with its own result.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from veil.enclave.audit import OsFileOps, TenantLog
from veil.sdk.audit import AuditRecord, EventType, MerkleTree, Outcome, hash_leaf
from veil.sdk.errors import AuditLogError

NOW = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def _line(n: int) -> bytes:
    return AuditRecord.create(
        now=NOW,
        event=EventType.INFERENCE,
        outcome=Outcome.SUCCESS,
        tenant="acme",
        origin="test",
        details={"n": n},
    ).to_line()


def _file_lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return data.split(b"\n")[:-1]


class ThreadRecordingOps(OsFileOps):
    """Real writes and fsyncs that note which thread made them; fsyncs can be slowed or gated."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay, self.gate = delay, gate
        self.writes: list[int] = []
        self.fsyncs: list[int] = []

    def write(self, fd: int, data: bytes) -> int:
        self.writes.append(threading.get_ident())
        return super().write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)  # a slow disk, so concurrent appenders pile up behind one fsync
        self.fsyncs.append(threading.get_ident())
        super().fsync(fd)


class RecordingCommit:
    """An ``on_commit`` that notes each call and answers every line with (index, its extra)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []  # (thread, first index, batch size)
        self.running = 0
        self.overlapped = False

    def __call__(self, first: int, hashes: list[bytes], extras: list[object]) -> list[object]:
        self.running += 1
        self.overlapped |= self.running > 1
        time.sleep(0.001)  # widen the window in which an overlapping call would be seen
        self.calls.append((threading.get_ident(), first, len(hashes)))
        self.running -= 1
        return [(first + i, extra) for i, extra in enumerate(extras)]


def test_a_lone_appender_commits_in_its_own_thread(tmp_path: Path) -> None:
    ops = ThreadRecordingOps()
    commit = RecordingCommit()
    threads_before = threading.active_count()
    log = TenantLog(tmp_path / "acme", file_ops=ops, on_commit=commit)
    assert threading.active_count() == threads_before  # no writer thread
    me = threading.get_ident()
    for n in range(5):
        assert log.append(_line(n), extra=f"x{n}") == (n, (n, f"x{n}"))
    log.close()
    assert ops.writes == [me] * 5 and ops.fsyncs == [me] * 5
    assert commit.calls == [(me, n, 1) for n in range(5)]
    assert _file_lines(tmp_path / "acme" / "entries.jsonl") == [_line(n) for n in range(5)]


def test_each_batch_is_led_by_one_of_its_appenders(tmp_path: Path) -> None:
    ops = ThreadRecordingOps(delay=0.003)
    commit = RecordingCommit()
    log = TenantLog(tmp_path / "acme", file_ops=ops, on_commit=commit)
    per_thread, workers = 5, 12
    owner: dict[int, int] = {}  # leaf index -> the appending thread
    answers: dict[int, object] = {}
    start = threading.Barrier(workers)
    failures: list[BaseException] = []

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                n = t * 100 + i
                index, result = log.append(_line(n), extra=n)
                owner[index] = threading.get_ident()
                answers[index] = (result, n)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    total = per_thread * workers
    assert not failures
    assert sorted(owner) == list(range(total))
    # every appender got its own on_commit result: its index and the extra it passed
    assert all(result == (index, n) for index, (result, n) in answers.items())
    # one write, one fsync and one on_commit per batch; followers shared their leader's fsync
    batches = len(commit.calls)
    assert len(ops.writes) == len(ops.fsyncs) == batches < total
    assert max(size for _, _, size in commit.calls) > 1
    assert not commit.overlapped
    # batches came in index order, back to back, and covered every line once
    firsts = [first for _, first, _ in commit.calls]
    assert firsts == [0] + [f + s for _, f, s in commit.calls[:-1]]
    assert sum(size for _, _, size in commit.calls) == total
    for (thread, first, size), writer, syncer in zip(
        commit.calls, ops.writes, ops.fsyncs, strict=True
    ):
        # the batch's writer, fsyncer and on_commit caller is one thread that appended to it
        assert writer == syncer == thread
        assert thread in {owner[i] for i in range(first, first + size)}
    lines = _file_lines(tmp_path / "acme" / "entries.jsonl")
    assert [int(AuditRecord.from_line(x).details["n"]) for x in lines] == [
        n for _, (_, n) in sorted(answers.items())
    ]
    assert log.root() == MerkleTree(hash_leaf(x) for x in lines).root()


def test_close_waits_for_queued_appends_and_then_refuses(tmp_path: Path) -> None:
    gate = threading.Event()
    log = TenantLog(tmp_path / "acme", file_ops=ThreadRecordingOps(gate=gate))
    indices: dict[int, int] = {}

    def appender(n: int) -> None:
        indices[n] = log.append_line(_line(n))

    first = threading.Thread(target=appender, args=(0,))
    first.start()
    time.sleep(0.05)  # it leads and is blocked in the gated fsync
    queued = [threading.Thread(target=appender, args=(n,)) for n in range(1, 5)]
    for t in queued:
        t.start()
    time.sleep(0.05)  # the others are queued behind it
    closer = threading.Thread(target=log.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive(), "close returned while appends were still in flight"
    gate.set()
    closer.join(10)
    for t in [first, *queued]:
        t.join(10)
    assert sorted(indices.values()) == list(range(5))
    lines = _file_lines(tmp_path / "acme" / "entries.jsonl")
    assert all(lines[i] == _line(n) for n, i in indices.items())
    with pytest.raises(AuditLogError, match="closed"):
        log.append_line(_line(9))


def test_a_failing_on_commit_fails_its_batch_only_and_passes_the_turn(tmp_path: Path) -> None:
    calls = 0

    def on_commit(first: int, hashes: list[bytes], extras: list[object]) -> list[object]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("signing failed")
        return list(extras)

    log = TenantLog(tmp_path / "acme", on_commit=on_commit)
    assert log.append(_line(0), extra="a") == (0, "a")
    with pytest.raises(AuditLogError, match="recorded but not receipted"):
        log.append(_line(1), extra="b")
    assert log.append(_line(2), extra="c") == (2, "c")  # the next batch still gets a leader
    log.close()
    # the record whose receipt failed is durable all the same
    assert _file_lines(tmp_path / "acme" / "entries.jsonl") == [_line(n) for n in range(3)]
