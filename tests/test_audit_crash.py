"""Crash safety: SIGKILL a writer mid-stream, many times; acknowledged records always survive.

The child appends from four threads and prints every index the log acknowledges. Its writes go
out in small, slow chunks so that a kill usually lands in the middle of a record, leaving a torn
tail, as a crash mid-``write`` does. After each kill the log is reopened: the torn tail must be cut
(and logged), every acknowledged record must be at its index, and a full export must verify.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from veil.enclave.audit import AuditLog, Signer
from veil.sdk.audit import AuditRecord, verify_export

REPO = Path(__file__).resolve().parents[1]
ROUNDS = 15

CHILD = r"""
import sys, threading, time
from datetime import UTC, datetime
from veil.enclave.audit import AuditLog, OsFileOps, Signer
from veil.sdk.audit import AuditRecord, EventType, Outcome

root, rnd = sys.argv[1], int(sys.argv[2])

class ChunkedOps(OsFileOps):
    def write(self, fd, data):
        time.sleep(0.0003)
        return super().write(fd, data[:97])

log = AuditLog(root, Signer.generate("veil.crash"), clock=lambda: datetime.now(UTC),
               checkpoint_interval=0.05, file_ops=lambda tenant: ChunkedOps())
out = threading.Lock()

def worker(w):
    seq = 0
    while True:
        record = AuditRecord.create(
            now=datetime.now(UTC), event=EventType.INFERENCE, outcome=Outcome.SUCCESS,
            tenant="acme", origin="crash-test", details={"round": rnd, "worker": w, "seq": seq})
        index = log.append(record)
        with out:
            sys.stdout.write(f"{index} {rnd} {w} {seq}\n")
            sys.stdout.flush()
        seq += 1

for w in range(4):
    threading.Thread(target=worker, args=(w,), daemon=True).start()
threading.Event().wait()
"""


def _run_and_kill(
    root: Path, rnd: int, acks_before_kill: int, delay: float
) -> dict[int, tuple[int, int, int]]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root), str(rnd)],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env=env,
    )
    assert child.stdout is not None
    acked: dict[int, tuple[int, int, int]] = {}

    def take(line: bytes) -> None:
        index, r, w, seq = map(int, line.split())
        assert index not in acked, f"index {index} acknowledged twice"
        acked[index] = (r, w, seq)

    try:
        while len(acked) < acks_before_kill:
            line = child.stdout.readline()
            assert line, f"writer exited early with {child.poll()}"
            take(line)
        time.sleep(delay)  # let the writer get into its next batch
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    for line in child.stdout.read().splitlines():  # acknowledged before the kill, still in pipe
        take(line)
    child.stdout.close()
    return acked


def test_sigkill_mid_stream_never_loses_acknowledged_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "log"
    rng = random.Random(20261128)
    all_acked: dict[int, tuple[int, int, int]] = {}
    torn_rounds = 0
    for rnd in range(ROUNDS):
        acked = _run_and_kill(root, rnd, rng.randint(10, 120), rng.uniform(0.002, 0.02))
        assert acked, "the writer acknowledged nothing"
        all_acked.update(acked)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="veil.audit"):
            log = AuditLog(
                root,
                Signer.generate("veil.check"),
                clock=lambda: datetime.now(UTC),
                checkpoint_interval=None,
            )
            size = log.size("acme")
        if any("torn tail" in r.getMessage() for r in caplog.records):
            torn_rounds += 1
        data = (root / "acme" / "entries.jsonl").read_bytes()
        assert data.endswith(b"\n"), "a torn tail survived reopening"
        lines = data.split(b"\n")[:-1]
        assert len(lines) == size
        assert max(all_acked) < size
        for index, (r, w, seq) in all_acked.items():
            details = AuditRecord.from_line(lines[index]).details
            assert (details["round"], details["worker"], details["seq"]) == (r, w, seq)
        out = tmp_path / f"export-{rnd}"
        log.export("acme", out)
        verified = verify_export(out, expect_vkey=log.vkey)
        assert verified.entry_count == size
        log.close()
    assert torn_rounds >= 1, "no round left a torn tail: the crash test did not exercise recovery"
