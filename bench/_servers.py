"""The servers under test, each started as its own process on 127.0.0.1, port 0.

``start_plain`` runs ``bench/_plain_server.py`` (the baseline); ``start_veil`` runs the real
``veil serve`` (simulated TEE) on a fresh data folder whose ``config.toml`` is the bench tenant
merged with an optional overlay (e.g. the keys that turn batching on), then uploads the models
with the real ``veil.sdk.Client``. ``rss_bytes`` sums a server's resident memory over its process
tree (a server may run worker processes).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "API_KEY",
    "ServerProcess",
    "VeilServer",
    "cpu_seconds",
    "load_overlay",
    "loadavg",
    "machine_busy_seconds",
    "rss_bytes",
    "start_plain",
    "start_veil",
    "toml_text",
]

API_KEY = "veil_bench_0123456789abcdef"  # the bench tenant's key (loopback only)
_BENCH = Path(__file__).resolve().parent
_ROOT = _BENCH.parent
_START_SECONDS = 180.0


@dataclass
class ServerProcess:
    """A server running in its own process; its stdout and stderr go to ``log``."""

    name: str
    proc: subprocess.Popen[bytes]
    address: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_bytes(self) -> int:
        return rss_bytes(self.proc.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class VeilServer(ServerProcess):
    data_dir: Path = Path()

    @property
    def root_pem(self) -> Path:
        return self.data_dir / "simulated-root.pem"


def _spawn(
    name: str, cmd: list[str], log: Path, pattern: str
) -> tuple[subprocess.Popen[bytes], str]:
    log.parent.mkdir(parents=True, exist_ok=True)
    # From the repository root, with it on the path: `veil serve` measures its own code there.
    path = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=_ROOT)
    deadline = time.monotonic() + _START_SECONDS
    while time.monotonic() < deadline:
        if match := re.search(pattern, log.read_text(errors="replace")):
            return proc, match.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise RuntimeError(f"{name} did not start (log {log}):\n{tail}")


def start_plain(models_dir: Path, workdir: Path) -> ServerProcess:
    log = workdir / "plain-server.log"
    cmd = [sys.executable, str(_BENCH / "_plain_server.py"), str(models_dir)]
    proc, address = _spawn("plain server", cmd, log, r"listening on (\S+)")
    return ServerProcess("plain", proc, address, log)


def start_veil(
    name: str, data_dir: Path, models: dict[str, Path], overlay: dict[str, Any] | None = None
) -> VeilServer:
    """``veil serve`` on a fresh ``data_dir``: the bench tenant (+ ``overlay``), models uploaded."""
    base: dict[str, Any] = {
        "tenants": {"default": {"api_key_sha256": hashlib.sha256(API_KEY.encode()).hexdigest()}}
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "config.toml").write_text(toml_text(_merge(base, overlay or {})))
    log = data_dir.parent / f"{name}-server.log"
    cmd = [
        sys.executable,
        "-m",
        "veil.sdk.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        "0",
        "--tee",
        "simulated",
    ]
    proc, address = _spawn(f"veil serve ({name})", cmd, log, r"serving on (\S+)")
    server = VeilServer(name, proc, address, log, data_dir=data_dir)
    try:
        _upload(server, models)
    except BaseException:
        server.stop()
        raise
    return server


def _upload(server: VeilServer, models: dict[str, Path]) -> None:
    from veil.sdk import AttestationPolicy, Client

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the simulated TEE's test root warns, by design
        policy = AttestationPolicy.simulated_for_tests(server.root_pem)
        with Client(server.address, api_key=API_KEY, policy=policy) as client:
            client.attest()
            for model_name, path in models.items():
                client.upload_model(path, model_name)


def load_overlay(*paths: Path | None) -> dict[str, Any]:
    """TOML overlays for ``config.toml``, merged in order (None: skipped)."""
    out: dict[str, Any] = {}
    for path in paths:
        if path is not None:
            out = _merge(out, tomllib.loads(path.read_text()))
    return out


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else '"' + key.replace('"', '\\"') + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def toml_text(doc: dict[str, Any], prefix: str = "") -> str:
    """Nested tables of scalars and lists as TOML (what a config overlay needs, no more)."""
    scalars = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    parts = []
    if scalars:
        parts.append((f"[{prefix}]\n" if prefix else "") + "\n".join(scalars) + "\n")
    for k, v in doc.items():
        if isinstance(v, dict):
            parts.append(toml_text(v, f"{prefix}.{_key(k)}" if prefix else _key(k)))
    return "\n".join(parts)


def _proc_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, in bytes."""
    total = 0
    for member in _proc_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        if match := re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE):
            total += int(match.group(1)) * 1024
    return total


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by ``pid`` and its live descendants."""
    total = 0
    for member in _proc_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TICK


def loadavg() -> str:
    """The 1-minute load average, as text (Linux ``/proc``; "?" elsewhere)."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine has been busy since boot (Linux ``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / _TICK  # user nice system idle iowait irq softirq steal
