"""A replicated deployment on loopback: PostgreSQL, a coordinator, replicas, an L4 balancer.

Every part is the real command a user runs (``veil coordinator``, ``veil serve --state
postgres``), each in its own process, so a replica can be SIGKILLed. The one stand-in is the
simulated TEE: all processes share one simulated platform (its ``simulated-tee/`` folder is
copied), as replicas on one vendor's hardware share the vendor's root.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from enclave_support import TENANT_KEYS, write_config

from veil.enclave._config import ServerConfig
from veil.enclave._measurement import code_manifest, measure
from veil.enclave.scaleout import coordinator_measurement, replica_measurement
from veil.enclave.tee._simulated import SimulatedSnp
from veil.sdk import AttestationPolicy, Client
from veil.sdk.replicas import Manifest, sign_manifest

__all__ = ["Deployment", "L4Balancer", "Process", "policy_toml"]


def policy_toml(root_pem: bytes, measurements: list[bytes]) -> str:
    """A policy file (``veil policy`` format) pinning the simulated root and measurements."""
    hexes = ", ".join(f'"{m.hex()}"' for m in measurements)
    return (
        'version = 1\nallowed_tees = ["sev-snp"]\n\n[snp]\n'
        f'roots = [{{pem = """{root_pem.decode()}"""}}]\n\n'
        f'[[release]]\nname = "test"\nsnp_measurements = [{hexes}]\n'
    )


class Process:
    """A ``veil`` command in its own process; waits for its ``serving on`` line."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "veil.sdk.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        )
        self.lines: list[str] = []
        self.address = ""
        self._reader: threading.Thread | None = None

    def wait_serving(self, timeout: float = 60.0) -> str:
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                self.lines.append(line)
                if match := re.search(r"serving on (\S+)", line):
                    self.address = match.group(1)
                    break
            else:
                raise RuntimeError("did not start:\n" + "".join(self.lines[-30:]))
        finally:
            timer.cancel()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self.address

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc.stdout is not None
        rc = self.proc.wait(timeout)
        self.lines.extend(self.proc.stdout.readlines())
        return rc

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class L4Balancer:
    """A TCP load balancer like a Kubernetes Service: each new connection goes to the next
    backend (round robin), skipping backends that refuse it. Bytes are copied both ways.

    It listens on ``listeners`` ports, one per client: gRPC shares one connection among the
    channels of a process that dial the same target, as clients on different hosts would not.
    """

    def __init__(self, backends: list[str], *, listeners: int = 1) -> None:
        self.backends = backends
        self._next = 0
        self._lock = threading.Lock()
        self._servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(listeners)]
        self.addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in self._servers]
        self._stop = False
        for server in self._servers:
            threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        for _ in range(len(self.backends)):
            with self._lock:
                target = self.backends[self._next % len(self.backends)]
                self._next += 1
            host, port = target.rsplit(":", 1)
            try:
                return socket.create_connection((host, int(port)), timeout=2)
            except OSError:
                continue
        return None

    def _accept(self, server: socket.socket) -> None:
        while not self._stop:
            try:
                client, _ = server.accept()
            except OSError:
                return
            backend = self._connect()
            if backend is None:
                client.close()
                continue
            backend.settimeout(None)
            for a, b in ((client, backend), (backend, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop = True
        for server in self._servers:
            server.close()


@dataclass
class Deployment:
    """Coordinator + replicas sharing one PostgreSQL database and one model volume."""

    root: Path
    database_url: str
    epoch_seconds: int = 12
    budget_epsilon: float = 3.0
    replicas: dict[str, Process] = field(default_factory=dict)
    coordinator: Process | None = None

    def __post_init__(self) -> None:
        self.platform = self.root / "platform"
        tee = SimulatedSnp.load_or_create(self.platform)
        self.root_pem = tee.root_pem
        self.shared = self.root / "shared"
        for part in ("models", "datasets"):
            (self.shared / part).mkdir(parents=True, exist_ok=True)
        self.template = self.root / "template"
        self._write_config(self.template)
        owner = ed25519.Ed25519PrivateKey.generate()
        owner_raw = owner.public_key().public_bytes_raw()
        (self.root / "owner.pub").write_bytes(owner_raw)
        self.coordinator_measurement = coordinator_measurement(code_manifest(), owner_raw)
        coordinator_policy = policy_toml(self.root_pem, [self.coordinator_measurement]).encode()
        (self.root / "coordinator-policy.toml").write_bytes(coordinator_policy)
        self.coordinator_policy_sha256 = hashlib.sha256(coordinator_policy).digest()
        self.measurement = self.replica_measurement(self.template)
        manifest = Manifest.build(
            deployment="loopback",
            policy_toml=policy_toml(self.root_pem, [self.measurement]),
            epoch_seconds=self.epoch_seconds,
        )
        (self.root / "manifest.json").write_bytes(manifest)
        (self.root / "manifest.json.sig").write_bytes(sign_manifest(manifest, owner))
        self.manifest_sha256 = hashlib.sha256(manifest).digest()

    def _write_config(self, data_dir: Path, *, extra: str = "") -> None:
        write_config(data_dir)
        with (data_dir / "config.toml").open("a") as f:
            f.write(f"\n[privacy]\nbudget_epsilon = {self.budget_epsilon}\n{extra}")

    def replica_measurement(self, data_dir: Path) -> bytes:
        base = measure(ServerConfig.load(data_dir))
        return replica_measurement(base, self.coordinator_policy_sha256)

    def _data_dir(self, name: str) -> Path:
        data_dir = self.root / name
        data_dir.mkdir()
        shutil.copytree(self.platform / "simulated-tee", data_dir / "simulated-tee")
        return data_dir

    def start_coordinator(self) -> str:
        data_dir = self._data_dir("coordinator")
        self.coordinator = Process(
            [
                "coordinator",
                "--data-dir",
                str(data_dir),
                "--port",
                "0",
                "--tee",
                "simulated",
                "--manifest",
                str(self.root / "manifest.json"),
                "--owner-key",
                str(self.root / "owner.pub"),
            ]
        )
        return self.coordinator.wait_serving()

    def launch_replica(
        self, name: str, *, extra_config: str = "", register: bool = True
    ) -> Process:
        """Start ``veil serve --state postgres`` (not waiting for it); ``register``: one of
        the deployment's replicas (stopped with it)."""
        assert self.coordinator is not None
        data_dir = self._data_dir(name)
        self._write_config(data_dir, extra=extra_config)
        for part in ("models", "datasets"):  # the shared volume, mounted into each replica
            (data_dir / part).symlink_to(self.shared / part)
        process = Process(
            [
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                "0",
                "--tee",
                "simulated",
                "--state",
                "postgres",
                "--coordinator",
                self.coordinator.address,
                "--coordinator-policy",
                str(self.root / "coordinator-policy.toml"),
                "--replica-id",
                name,
            ],
            env={"VEIL_DATABASE_URL": self.database_url},
        )
        if register:
            self.replicas[name] = process
        return process

    def policy(self) -> AttestationPolicy:
        return AttestationPolicy.simulated_for_tests(self.root_pem, measurements=[self.measurement])

    def client(self, target: str, tenant: str = "default") -> Client:
        return Client(target, tenant=tenant, api_key=TENANT_KEYS[tenant], policy=self.policy())

    def stop(self) -> None:
        """SIGTERM every replica at once, then the coordinator."""
        for process in self.replicas.values():
            if process.proc.poll() is None:
                process.proc.send_signal(signal.SIGTERM)
        for process in self.replicas.values():
            process.stop()
        if self.coordinator is not None:
            self.coordinator.stop()
