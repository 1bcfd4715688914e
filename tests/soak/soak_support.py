"""Helpers for the reliability suite (``make soak``): real ``veil serve`` processes on loopback.

Every server here is a child process,
``python -m veil.sdk.cli serve --tee simulated --port 0``, so a test can SIGTERM it, SIGKILL it
and read its memory from ``/proc``. Every wait is bounded and every child is killed when its
``with`` block ends, whatever happened inside.

Figures a check measured go to :func:`record`; the suite's ``conftest.py`` prints them all at the
end of the run (and writes them as JSON to ``$SOAK_FIGURES`` when that is set).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import grpc
import numpy as np
from enclave_support import TENANT_KEYS, mlp_model, write_config
from grpc_health.v1 import health_pb2, health_pb2_grpc

from soak import load_worker
from soak.load_worker import LoadResult, LoadSpec
from veil.sdk import AttestationPolicy, Client, InsecureModeWarning, VeilError
from veil.sdk._audit_client import attestation_check
from veil.sdk.audit import Receipt, hash_leaf, verify_export

warnings.filterwarnings("ignore", category=InsecureModeWarning)

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
START_SECONDS = 120.0  # a cold `veil serve` imports ONNX Runtime and torch: seconds, not minutes
# What a leftover temporary file is called: atomic writes (``.NAME.XXXX.tmp``, also dataset
# uploads' ``.enc.*.tmp``), other ``*.tmp`` files, upload spool files (``*.spool``); and anything
# in the upload spool folder ``DATA_DIR/tmp/``.
TEMP_MARKERS = (".tmp", ".spool", ".part")
SPOOL_DIR = "tmp"


# -- figures -------------------------------------------------------------------------------------

FIGURES: dict[str, dict[str, str]] = {}


def record(check: str, name: str, value: object) -> None:
    """Remember one measured figure of ``check`` for the end-of-run summary."""
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    else:
        text = str(value)
    FIGURES.setdefault(check, {})[name] = text


# -- data directories ----------------------------------------------------------------------------


def make_data_dir(
    path: Path, tee_template: Path, *, limits: Mapping[str, int | float] | None = None
) -> Path:
    """A data directory with the shared simulated platform, both test tenants and ``[limits]``."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tee_template, path / "simulated-tee")
    write_config(path)
    if limits:
        lines = ["", "[limits]", *(f"{key} = {value!r}" for key, value in limits.items()), ""]
        with (path / "config.toml").open("a") as config:
            config.write("\n".join(lines))
    return path


def temp_files(root: Path) -> dict[Path, tuple[int, int]]:
    """Temporary files under data directory ``root``, with (inode, mtime) to tell them apart
    from a later file of the same name."""
    found = {}
    for p in root.rglob("*"):
        spooled = p.relative_to(root).parts[0] == SPOOL_DIR
        if spooled or any(marker in p.name for marker in TEMP_MARKERS):
            try:
                info = p.stat()
            except FileNotFoundError:  # a running server finished with it meanwhile
                continue
            if stat.S_ISREG(info.st_mode):
                found[p] = (info.st_ino, info.st_mtime_ns)
    return found


# -- process memory ------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(child) for child in task.read_text().split())
        except OSError:  # the thread or process is gone
            continue
    return found


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and every descendant (a server may run work in children)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) * 1024 if match else 0
        todo.extend(_children(current))
    return total


def bytes_received(address: str) -> int:
    """The most bytes any one TCP connection to the server at ``address`` has received
    (``ss``'s ``bytes_received``: what the kernel took in, whatever the process has read)."""
    port = address.rsplit(":", 1)[1]
    listing = subprocess.run(
        ["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    return max((int(n) for n in re.findall(r"bytes_received:(\d+)", listing)), default=0)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssWatch:
    """Samples a process tree's RSS in a thread; optionally SIGKILLs it above ``kill_above``.

    The kill protects the machine the suite runs on (an allocation bomb that got past the
    enclave would otherwise take gigabytes from everyone); a test reports it as a failure.
    """

    def __init__(self, pid: int, *, interval: float = 0.5, kill_above: int | None = None) -> None:
        self.pid = pid
        self.interval = interval
        self.kill_above = kill_above
        self.samples: list[tuple[float, int]] = []
        self.killed_at: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = time.monotonic()

    def __enter__(self) -> Self:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = tree_rss(self.pid)
            if rss == 0:
                return
            self.samples.append((time.monotonic() - self.started, rss))
            if self.kill_above is not None and rss > self.kill_above:
                self.killed_at = rss
                os.kill(self.pid, signal.SIGKILL)
                return
            self._stop.wait(self.interval)

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)

    def median(self, start: float, end: float) -> int:
        """The median sample taken in ``[start, end)`` seconds (transient peaks of in-flight
        requests do not move it; sustained growth does)."""
        window = sorted(rss for t, rss in self.samples if start <= t < end)
        if not window:
            raise AssertionError(f"no RSS sample between {start:g} s and {end:g} s")
        return window[len(window) // 2]


# -- a `veil serve` child process ----------------------------------------------------------------


class VeilServer:
    """``veil serve`` on 127.0.0.1, port 0, simulated TEE, in a child process.

    ``with VeilServer(data_dir, log) as server:`` starts it and waits for "serving on"; leaving
    the block kills it if it is still running. Its stdout and stderr go to ``log``.
    """

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.start_seconds = 0.0
        self._log: IO[bytes] | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def start(self) -> None:
        """Start the server and wait (bounded) until it prints its address."""
        self.address = ""
        self._log = self.log_path.open("ab")
        self._log.write(f"--- start {datetime.now(UTC).isoformat()}\n".encode())
        self._log.flush()
        began = time.monotonic()
        cmd = [sys.executable, "-m", "veil.sdk.cli", "serve", "--data-dir", str(self.data_dir)]
        self.proc = subprocess.Popen(
            [*cmd, "--port", "0", "--tee", "simulated"],
            cwd=REPO,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        ready = threading.Event()
        threading.Thread(target=self._read_stdout, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(START_SECONDS) or not self.address:
            self.close()
            raise AssertionError(f"veil serve did not start; log tail:\n{self.log_tail()}")
        self.start_seconds = time.monotonic() - began

    def _read_stdout(self, proc: subprocess.Popen[bytes], ready: threading.Event) -> None:
        assert proc.stdout is not None
        with self.log_path.open("ab") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if not ready.is_set() and (match := re.search(rb"serving on (\S+)", line)):
                    self.address = match.group(1).decode()
                    ready.set()
        ready.set()  # EOF: the process is gone (start() then sees no address)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM; the exit code, or None when it was still running after ``timeout`` (then
        it is SIGKILLed)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-chars:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def rss(self) -> int:
        return tree_rss(self.pid)

    def root_pem(self) -> bytes:
        return (self.data_dir / "simulated-root.pem").read_bytes()

    def policy(self) -> AttestationPolicy:
        return AttestationPolicy.simulated_for_tests(self.root_pem())

    def client(self, tenant: str = "default", *, timeout: float = 60.0) -> Client:
        return Client(
            self.address,
            tenant=tenant,
            api_key=TENANT_KEYS[tenant],
            policy=self.policy(),
            timeout=timeout,
        )

    def health(self, timeout: float = 5.0) -> float:
        """Seconds the standard health check took; raises unless it answers SERVING."""
        began = time.monotonic()
        with grpc.insecure_channel(self.address) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING, answer
        return time.monotonic() - began


# -- models and inputs ---------------------------------------------------------------------------


def big_model(megabytes: int) -> bytes:
    """A valid MLP (the tests' usual shape) whose weights take about ``megabytes`` MiB."""
    return mlp_model(hidden=megabytes * MiB // 32)


def big_dataset(megabytes: int) -> bytes:
    """An ``.npz`` training set (x: float32 rows of 64, y: 10 classes) of about that size."""
    import io

    rows = megabytes * MiB // (64 * 4 + 8)
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    np.savez(
        buf,
        x=rng.random((rows, 64), dtype=np.float32),
        y=rng.integers(0, 10, rows).astype(np.int64),
    )
    return buf.getvalue()


# -- receipts ------------------------------------------------------------------------------------


def read_receipts(path: Path) -> list[Receipt]:
    """Receipts written by ``load_worker.write_receipts`` (a torn last line is not one)."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.split("\n")[:-1]  # whatever follows the last newline was never finished
    return [Receipt.from_body(json.loads(line)) for line in lines if line]


@dataclass
class Proven:
    """What :func:`prove_receipts` established for one tenant."""

    receipts: int
    export_dir: Path
    failures: list[str] = field(default_factory=list)


def prove_receipts(
    server: VeilServer, tenant: str, receipts: list[Receipt], export_dir: Path
) -> Proven:
    """Prove every receipt against the (restarted) server's log.

    An export of the tenant's whole log is verified offline (attestation evidence, signed
    checkpoint, the entries reproduce the signed tree); each receipt's leaf must be that
    export's line at its index. The first, last and a few more are also proven online with an
    inclusion proof against a fresh checkpoint.
    """
    sample = receipts[:1] + receipts[-1:] + receipts[1 : -1 : max(1, len(receipts) // 4)]
    failures = []
    with server.client(tenant) as client:
        for receipt in sample:
            try:
                client.prove_receipt(receipt)
            except VeilError as exc:
                failures.append(f"leaf {receipt.leaf_index}: no inclusion proof: {exc}")
        out = client.export_audit(export_dir)
    check = attestation_check(server.policy(), now=lambda: datetime.now(UTC))
    verified = verify_export(out, attestation_check=check)
    assert verified.full, "a full export was asked for"
    lines = (out / "entries.jsonl").read_bytes().split(b"\n")[:-1]
    proven = Proven(len(receipts), out, failures)
    for receipt in receipts:
        if receipt.tenant != tenant:
            proven.failures.append(f"receipt for {receipt.tenant} among {tenant}'s")
        elif receipt.leaf_index >= len(lines):
            proven.failures.append(f"leaf {receipt.leaf_index} is past the log ({len(lines)})")
        elif hash_leaf(lines[receipt.leaf_index]) != receipt.leaf_hash:
            proven.failures.append(f"leaf {receipt.leaf_index} is not the record it signed")
    return proven


def run_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``veil ARGS`` in a child process (the installed command line, as an operator runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "veil.sdk.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- a fleet of load processes -------------------------------------------------------------------


class LoadFleet:
    """Client processes (``spawn``: no gRPC state inherited), one per :class:`LoadSpec`.

    ``with LoadFleet(specs) as fleet:`` starts them; ``fleet.go()`` waits until every one has
    attested and releases them together; ``fleet.results(...)`` collects their reports. Leaving
    the block kills any process still running.
    """

    def __init__(self, specs: list[LoadSpec]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._barrier = ctx.Barrier(len(specs) + 1)
        self._queue: multiprocessing.Queue[LoadResult] = ctx.Queue()
        self._procs = [
            ctx.Process(target=load_worker.run, args=(spec, self._barrier, self._queue))
            for spec in specs
        ]

    def __enter__(self) -> Self:
        for proc in self._procs:
            proc.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        for proc in self._procs:
            proc.join(30)

    def go(self) -> None:
        """Wait (bounded) until every process has attested, then let them all start."""
        self._barrier.wait(load_worker.BARRIER_SECONDS)

    def results(self, timeout: float) -> tuple[list[LoadResult], int]:
        """The reports that came back within ``timeout``, and how many processes sent none."""
        found: list[LoadResult] = []
        deadline = time.monotonic() + timeout
        while len(found) < len(self._procs) and time.monotonic() < deadline:
            try:
                found.append(self._queue.get(timeout=1.0))
            except queue.Empty:
                if not any(proc.is_alive() for proc in self._procs) and self._queue.empty():
                    break
        return found, len(self._procs) - len(found)


def assert_none(problems: list[str]) -> None:
    """Fail listing every problem (the first on the first line, for the summary)."""
    if problems:
        listing = "\n".join(f"  {p}" for p in problems)
        raise AssertionError(f"{len(problems)} problem(s), first: {problems[0]}\n{listing}")
