"""``[server] workers = 2``: a real ``veil serve`` supervisor and two forked workers on one port.

Which worker served a call is read from the supervisor's DEBUG log (``audit: worker=W
tenant=T leaf=L``: the supervisor writes every worker's audit records) matched with the
receipt the client verified; nothing about workers travels on the wire.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from enclave_support import TENANT_KEYS, mlp_model, write_config

from veil.sdk import AttestationPolicy, Client, RemoteError
from veil.sdk._audit_client import attestation_check
from veil.sdk._core import ClientCore
from veil.sdk.audit import verify_export
from veil.sdk.protocol import Method
from veil.v1 import inference_pb2_grpc

SERVE = [sys.executable, "-m", "veil.sdk.cli", "serve", "--port", "0", "--tee", "simulated"]
SERVE += ["--log-level", "DEBUG"]
X = np.arange(8, dtype=np.float32).reshape(2, 4)
MODEL = mlp_model()
EXPECTED = ort.InferenceSession(MODEL).run(["probs"], {"x": X})[0]


class Supervised:
    """``veil serve`` with ``workers = 2`` in its own process group, DEBUG log in a file."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self._log_file = log_path.open("w")
        self.proc = subprocess.Popen(
            [*SERVE, "--data-dir", str(data_dir)],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        assert self.proc.stdout is not None
        self.stdout: list[str] = []
        for line in self.proc.stdout:
            self.stdout.append(line)
            if match := re.search(r"serving on (\S+)", line):
                self.address = match.group(1)
                break
        else:
            raise AssertionError(f"did not start: {self.stdout} {self.log()}")
        self.root_pem = (data_dir / "simulated-root.pem").read_bytes()
        self._connections = 0

    def log(self) -> str:
        return self.log_path.read_text()

    def worker_pids(self) -> dict[int, int]:
        """The latest pid of each worker index, from the log."""
        return {
            int(i): int(p) for i, p in re.findall(r"worker (\d+) serving \(pid (\d+)\)", self.log())
        }

    def policy(self) -> AttestationPolicy:
        return AttestationPolicy.simulated_for_tests(self.root_pem)

    def client(self, tenant: str = "default") -> Client:
        """A client on its own TCP connection (distinct channel arguments: no shared subchannel),
        so the kernel may hand it to either worker."""
        self._connections += 1
        return Client(
            self.address,
            tenant=tenant,
            api_key=TENANT_KEYS[tenant],
            policy=self.policy(),
            max_message_bytes=65 * 1024 * 1024 + self._connections,
        )

    def worker_of(self, client: Client) -> int:
        """The worker that wrote the client's last receipt."""
        receipt = client.receipts[-1]
        pattern = rf"audit: worker=(\d+) tenant={receipt.tenant} leaf={receipt.leaf_index}\b"
        found = re.findall(pattern, self.log())
        assert len(found) == 1, found
        return int(found[0])

    def clients_on_each_worker(self, tenant: str = "default") -> dict[int, Client]:
        """One client connected to each worker (tries new connections until both are seen)."""
        found: dict[int, Client] = {}
        for _ in range(40):
            client = self.client(tenant)
            client.list_models()
            worker = self.worker_of(client)
            if worker in found:
                client.close()
            else:
                found[worker] = client
            if len(found) == 2:
                return found
        raise AssertionError(f"40 connections all landed on worker(s) {sorted(found)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._log_file.close()
        return code


def _gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a zombie awaiting its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def _start(tmp_path: Path, tee_template: Path, name: str) -> Supervised:
    import shutil

    data = tmp_path / name
    shutil.copytree(tee_template, data / "simulated-tee")
    write_config(data, extra_server="workers = 2\nreplay_window_seconds = 60")
    return Supervised(data, tmp_path / f"{name}.log")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, tee_template: Path) -> Iterator[Supervised]:
    served = _start(tmp_path_factory.mktemp("workers"), tee_template, "shared")
    try:
        yield served
    finally:
        served.stop()


# -- shared state across workers -----------------------------------------------------------------


def test_concurrent_clients_spread_over_both_workers(pool: Supervised) -> None:
    with pool.client() as setup:
        setup.upload_model(MODEL, "spread")
    results: list[tuple[int, np.ndarray]] = []
    errors: list[BaseException] = []
    notes: list[tuple[int, str]] = []  # (worker, v2 receipt text: its last part is the batch note)
    lock = threading.Lock()

    def run() -> None:
        try:
            with pool.client() as client:
                for _ in range(3):
                    out = client.infer("spread", {"x": X})["probs"]
                    with lock:
                        results.append((pool.worker_of(client), out))
                        notes.append((pool.worker_of(client), client._core.receipts[-1][1]))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(results) == 48
    for _, out in results:
        np.testing.assert_allclose(out, EXPECTED, rtol=1e-5, atol=1e-6)
    per_worker = {w: sum(1 for r in results if r[0] == w) for w in (0, 1)}
    batches: dict[str, set[int]] = {}
    for worker, text in notes:
        batches.setdefault(text.split("\n", 4)[4], set()).add(worker)
    shared = sum(1 for workers in batches.values() if len(workers) == 2)
    # informational: how often one group commit (one signature) took both workers' records
    print(f"inferences per worker: {per_worker}; {len(batches)} receipt batches, {shared} mixed")
    # 16 connections hashed over 2 listeners: all on one has odds 2 / 2**16
    assert per_worker[0] > 0 and per_worker[1] > 0


def test_model_uploaded_through_one_worker_is_served_and_deleted_by_the_other(
    pool: Supervised,
) -> None:
    clients = pool.clients_on_each_worker()
    try:
        clients[0].upload_model(MODEL, "crossed")
        assert pool.worker_of(clients[0]) == 0
        out = clients[1].infer("crossed", {"x": X})["probs"]
        assert pool.worker_of(clients[1]) == 1
        np.testing.assert_allclose(out, EXPECTED, rtol=1e-5, atol=1e-6)
        clients[0].upload_model(mlp_model(seed=1), "crossed")  # version 2, seen by worker 1
        assert clients[1].infer("crossed", {"x": X})["probs"].shape == (2, 3)
        assert [m.version for m in clients[1].list_models() if m.name == "crossed"] == [1, 2]
        clients[1].delete_model("crossed")
        with pytest.raises(RemoteError) as err:
            clients[0].infer("crossed", {"x": X})
        assert err.value.code == "NOT_FOUND"
    finally:
        for client in clients.values():
            client.close()


def test_a_request_replayed_to_the_other_worker_is_refused(pool: Supervised) -> None:
    clients = pool.clients_on_each_worker()
    try:
        clients[0].upload_model(MODEL, "replayed")
        core = ClientCore(tenant="default", api_key=TENANT_KEYS["default"], policy=pool.policy())
        request = ClientCore.infer_request("replayed", {"x": X}, None)
        sealed = core.seal(clients[0].attest(), Method.INFER, request).request
        first = inference_pb2_grpc.InferenceServiceStub(clients[0]._channel)
        first.Infer(sealed, timeout=30)
        other = inference_pb2_grpc.InferenceServiceStub(clients[1]._channel)
        with pytest.raises(grpc.RpcError) as err:
            other.Infer(sealed, timeout=30)
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert err.value.details() == "request id was already used: replay refused"
        with pytest.raises(grpc.RpcError) as again:  # and to the first worker too
            first.Infer(sealed, timeout=30)
        assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        for client in clients.values():
            client.close()


def test_keys_rotated_by_the_supervisor_reach_every_worker(pool: Supervised) -> None:
    clients = pool.clients_on_each_worker()
    try:
        before = clients[0].attest(force=True).key_id
        pool.proc.send_signal(signal.SIGHUP)
        _wait_until(lambda: "sealing keys rotated" in pool.log())
        rotated = clients[0].attest(force=True)  # attested on worker 0 ...
        assert rotated.key_id != before
        # ... and a request sealed to it opens on worker 1 (pushed, or pulled on a miss)
        core = ClientCore(tenant="default", api_key=TENANT_KEYS["default"], policy=pool.policy())
        core_request = ClientCore.infer_request("none", {"x": X}, None)
        sealed = core.seal(rotated, Method.INFER, core_request).request
        stub = inference_pb2_grpc.InferenceServiceStub(clients[1]._channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Infer(sealed, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # opened; the model is unknown
        assert clients[1].attest(force=True).key_id == rotated.key_id
    finally:
        for client in clients.values():
            client.close()


def test_the_exported_log_holds_every_workers_records_and_verifies(
    pool: Supervised, tmp_path: Path
) -> None:
    clients = pool.clients_on_each_worker("acme")
    try:
        clients[0].upload_model(MODEL, "audited")
        for _ in range(3):
            for client in clients.values():
                client.infer("audited", {"x": X})
        out = clients[1].export_audit(tmp_path / "export")
    finally:
        for client in clients.values():
            client.close()
    check = attestation_check(pool.policy(), now=lambda: datetime.now(UTC))
    result = verify_export(out, attestation_check=check)
    assert result.full
    leaves = [int(x) for x in re.findall(r"audit: worker=\d+ tenant=acme leaf=(\d+)", pool.log())]
    writers = set(re.findall(r"audit: worker=(\d+) tenant=acme leaf=", pool.log()))
    assert writers == {"0", "1"}
    # one log, no gap, no duplicate; the export's own record follows what it exported
    assert sorted(leaves) == list(range(len(leaves)))
    assert result.entry_count == len(leaves) - 1


# -- processes: a worker killed, the supervisor stopped or killed ---------------------------------


def test_a_killed_worker_is_restarted_and_retries_succeed(
    tmp_path: Path, tee_template: Path
) -> None:
    served = _start(tmp_path, tee_template, "killed")
    try:
        with served.client() as setup:
            setup.upload_model(MODEL, "m")
        victim = served.worker_pids()[0]
        stop = threading.Event()
        done: list[int] = []
        failures: list[BaseException] = []
        retried: list[int] = []

        def load() -> None:
            while not stop.is_set():
                for attempt in range(20):
                    try:
                        with served.client() as client:
                            out = client.infer("m", {"x": X})["probs"]
                        np.testing.assert_allclose(out, EXPECTED, rtol=1e-5, atol=1e-6)
                        done.append(attempt)
                        break
                    except grpc.RpcError as exc:
                        retried.append(1)
                        if exc.code() not in (
                            grpc.StatusCode.UNAVAILABLE,
                            grpc.StatusCode.INTERNAL,
                            grpc.StatusCode.CANCELLED,
                        ):
                            failures.append(exc)
                            return
                        time.sleep(0.2)
                    except Exception as exc:  # VeilError from a dropped connection: retry too
                        retried.append(1)
                        if "UNAVAILABLE" not in repr(exc) and "unavailable" not in str(exc):
                            failures.append(exc)
                            return
                        time.sleep(0.2)
                else:
                    failures.append(AssertionError("20 attempts failed"))
                    return

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        _wait_until(lambda: len(done) >= 8)
        os.kill(victim, signal.SIGKILL)
        _wait_until(lambda: re.search(r"worker 0 \(pid \d+\) was killed by SIGKILL", served.log()))
        _wait_until(lambda: served.worker_pids()[0] != victim)
        settled = len(done)
        _wait_until(lambda: len(done) >= settled + 8)
        stop.set()
        for t in threads:
            t.join(60)
        assert not failures, failures[:3]
        assert "(restart 1)" in served.log()
        assert _gone(victim)
        # the restarted worker serves: new connections reach both workers again
        clients = served.clients_on_each_worker()
        for client in clients.values():
            client.close()
        # SIGKILL of the supervisor: its workers die with it (no orphan serving without a log)
        pids = list(served.worker_pids().values())
        served.proc.kill()
        served.proc.wait(10)
        _wait_until(lambda: all(_gone(p) for p in pids), timeout=10)
    finally:
        served.stop(signal.SIGKILL)


def test_sigterm_drains_and_stops_every_process(tmp_path: Path, tee_template: Path) -> None:
    served = _start(tmp_path, tee_template, "stopped")
    with served.client() as client:
        client.upload_model(MODEL, "m")
        client.infer("m", {"x": X})
    pids = list(served.worker_pids().values())
    assert len(pids) == 2 and not any(_gone(p) for p in pids)
    assert served.stop(signal.SIGTERM) == 0
    rest = served.proc.stdout.read() if served.proc.stdout else ""
    assert "veil enclave stopped" in rest
    assert all(_gone(p) for p in pids)
    log = served.log()
    assert re.search(r"audited calls per worker: worker \d: \d+", log)
    assert "Traceback" not in log
    assert not (served.data_dir / "replay.sqlite3").exists()


# -- the parts, one at a time --------------------------------------------------------------------


def test_sqlite_replay_store_accepts_each_id_once_across_processes(tmp_path: Path) -> None:
    from veil.enclave._replay import ReplayError, ReplayStore, SqliteReplayStore

    path = tmp_path / "replay.sqlite3"
    store = SqliteReplayStore.create(path, 60_000)
    assert isinstance(store, ReplayStore)
    ids = [bytes([i]) * 16 for i in range(200)]
    results = tmp_path / "accepted"
    results.mkdir()
    children = []
    for n in range(3):  # three processes race over the same ids, each with its own connection
        pid = os.fork()
        if pid == 0:
            accepted = []
            mine = SqliteReplayStore(path, 60_000)
            for request_id in ids:
                try:
                    mine.check(request_id, 1_000_000, 1_000_000)
                    accepted.append(request_id.hex())
                except ReplayError:
                    pass
            (results / str(n)).write_text("\n".join(accepted))
            os._exit(0)
        children.append(pid)
    for pid in children:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    accepted = [line for f in results.iterdir() for line in f.read_text().split()]
    assert sorted(accepted) == sorted(i.hex() for i in ids)  # each exactly once, none lost
    with pytest.raises(ReplayError):
        store.check(ids[0], 1_000_000, 1_000_000)
    # expired (now >= timestamp + window + 1): forgotten, a fresh timestamp is accepted
    store.check(ids[0], 1_070_000, 1_070_000)
    store.close()


def test_sqlite_replay_store_refuses_stale_and_fails_closed(tmp_path: Path) -> None:
    from veil.enclave._replay import SqliteReplayStore, StaleRequestError
    from veil.sdk.errors import ProtocolError

    store = SqliteReplayStore.create(tmp_path / "r.sqlite3", 1_000)
    with pytest.raises(StaleRequestError):
        store.check(b"a" * 16, 0, 5_000)
    (tmp_path / "r.sqlite3").unlink()
    (tmp_path / "r.sqlite3").mkdir()  # the file is gone and cannot be recreated
    fresh = SqliteReplayStore(tmp_path / "r.sqlite3", 1_000)
    with pytest.raises(ProtocolError, match="replay store is unavailable"):
        fresh.check(b"b" * 16, 5_000, 5_000)


def test_model_cache_sees_another_process_register_and_delete(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from veil.enclave._admission import validate_onnx
    from veil.enclave._limits import Limits
    from veil.enclave._store import ModelStore

    def store() -> ModelStore:
        return ModelStore(
            tmp_path / "models",
            storage_key=lambda tenant: bytes(32),
            clock=lambda: datetime.now(UTC),
            sweep=False,
        )

    validated = validate_onnx(
        MODEL, max_bytes=1 << 20, allowed_domains=("", "ai.onnx"), limits=Limits()
    )
    one, two = store(), store()
    one.register("default", "m", MODEL, validated)
    assert two.resolve("default", "m").version == 1
    one.register("default", "m", MODEL, validated)  # within the filesystem's clock tick
    assert two.resolve("default", "m").version == 2
    time.sleep(0.15)  # now the listing is cached on the directory's mtime ...
    assert two.resolve("default", "m").version == 2
    one.delete("default", "m@2")  # ... which the delete changes
    assert two.resolve("default", "m").version == 1


def test_key_epochs_travel_to_a_worker_and_still_open_what_was_sealed_to_them() -> None:
    from datetime import UTC, datetime, timedelta

    from veil.enclave._keys import KeyEpoch
    from veil.sdk.protocol import Suite

    epoch = KeyEpoch.generate(
        now=datetime.now(UTC), lifetime=timedelta(hours=1), measurement=b"\x01" * 48
    )
    assert "material" not in repr(epoch)
    rebuilt = KeyEpoch.from_wire(epoch.to_wire())
    assert (rebuilt.key_id, rebuilt.claims, rebuilt.digest) == (
        epoch.key_id,
        epoch.claims,
        epoch.digest,
    )
    assert abs(rebuilt.expires_at - epoch.expires_at) < timedelta(milliseconds=1)
    for suite in Suite:
        sealed = suite.hpke.encrypt(b"hello", epoch.private_keys[suite].public_key(), b"info")
        assert suite.hpke.decrypt(sealed, rebuilt.private_keys[suite], b"info") == b"hello"


def test_control_frames_carry_plain_values_only() -> None:
    import pickle
    import socket

    from veil.enclave._ipc import _receive

    ours, theirs = socket.socketpair()
    with ours, theirs:
        plain = pickle.dumps((1, "append", (b"line", None, 3)), protocol=5)
        ours.sendall(len(plain).to_bytes(4, "big") + plain)
        assert _receive(theirs) == (1, "append", (b"line", None, 3))
        hostile = pickle.dumps((1, "x", (os.system,)), protocol=5)  # names a global
        ours.sendall(len(hostile).to_bytes(4, "big") + hostile)
        assert _receive(theirs) is None  # refused, nothing was called


def test_workers_key_is_validated_and_each_worker_gets_its_own_metrics_port(
    tmp_path: Path,
) -> None:
    from veil.enclave._config import ServerConfig
    from veil.enclave._workers import _worker_config
    from veil.sdk.errors import ConfigError

    write_config(tmp_path, extra_server="workers = 0")
    with pytest.raises(ConfigError, match=r"server\.workers must be a positive integer"):
        ServerConfig.load(tmp_path)
    write_config(tmp_path, extra_server="workers = 3")
    text = (tmp_path / "config.toml").read_text() + '\n[metrics]\naddress = "127.0.0.1:9400"\n'
    (tmp_path / "config.toml").write_text(text)
    config = ServerConfig.load(tmp_path)
    assert config.workers == 3
    ports = [_worker_config(config, i).observability.metrics_address for i in range(3)]
    assert ports == ["127.0.0.1:9400", "127.0.0.1:9401", "127.0.0.1:9402"]
    assert _worker_config(config, 1).canonical() == config.canonical()  # same measurement


def test_the_reserved_port_is_free_first_and_then_kept_for_the_workers() -> None:
    import errno
    import socket

    from veil.enclave._workers import reserve_port

    probe = reserve_port("127.0.0.1", 0)
    port = probe.getsockname()[1]
    try:
        with pytest.raises(OSError) as err:  # a second enclave on that port is refused ...
            reserve_port("127.0.0.1", port)
        assert err.value.errno == errno.EADDRINUSE
        with socket.socket() as plain, pytest.raises(OSError):  # ... and so is anything else
            plain.bind(("127.0.0.1", port))
        with socket.socket() as worker:  # while a worker (SO_REUSEPORT) joins it
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
    finally:
        probe.close()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with pytest.raises(OSError):
            reserve_port("127.0.0.1", listener.getsockname()[1])


def test_the_supervisor_desk_rotates_once_and_pushes_and_errors_keep_their_type(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime, timedelta

    from veil.enclave._audit_client import SupervisorDesk, epochs_from_wire
    from veil.enclave._ipc import _rebuild
    from veil.enclave._keys import KeyEpoch, KeyRing
    from veil.enclave.audit import AuditLog, Signer
    from veil.sdk.audit import AuditRecord, EventType, Outcome
    from veil.sdk.errors import AuditLogError, ProtocolError

    def epoch() -> KeyEpoch:
        return KeyEpoch.generate(
            now=datetime.now(UTC), lifetime=timedelta(hours=1), measurement=b"\x02" * 48
        )

    ring = KeyRing(epoch())
    stale = [False]
    pushed: list[str] = []

    def fresh() -> KeyEpoch:
        if stale[0]:
            ring.rotate(epoch())
            stale[0] = False
        return ring.current

    with AuditLog(tmp_path / "audit", Signer.generate("t"), clock=lambda: datetime.now(UTC)) as log:
        desk = SupervisorDesk(
            log,
            epochs=lambda: ring.epochs,
            fresh_epoch=fresh,
            broadcast=lambda epochs: pushed.append(epochs[0].key_id),
            on_ready=lambda index, pid: None,
        )
        first = ring.current.key_id
        assert epochs_from_wire(desk.handle(0, "fresh_epoch", ()))[0].key_id == first
        assert pushed == []  # nothing rotated, nothing pushed
        stale[0] = True
        current, previous = epochs_from_wire(desk.handle(1, "fresh_epoch", ()))
        assert previous is not None and previous.key_id == first
        assert pushed == [current.key_id] != [first]
        line = AuditRecord.create(
            now=datetime.now(UTC),
            event=EventType.MODEL_LISTED,
            outcome=Outcome.SUCCESS,
            tenant="acme",
            origin="test",
        ).to_line()
        assert desk.handle(1, "append", (line,)) == 0
        assert desk.counts == {1: 1}
        assert log.size("acme") == 1
        with pytest.raises(AuditLogError, match="unknown control call"):
            desk.handle(0, "shell", ())
    refused = _rebuild(ProtocolError.__module__, ProtocolError.__qualname__, "why")
    assert type(refused) is ProtocolError and str(refused) == "why"
    unknown = _rebuild("os", "system", "rm")  # not a VeilError: never built from the name
    assert type(unknown) is AuditLogError
