"""``veil serve`` refuses a data directory or a port another enclave already holds.

Two services on one data directory used to both run and leave an audit log that refused to
open ("records were altered"); two on one port used to share it (SO_REUSEPORT).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_cli import Server, server, veil

from veil.enclave._lock import LOCK_FILE, DataDirLock
from veil.sdk.errors import ConfigError

__all__ = ["server"]  # the fixture, shared with test_cli


def test_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    first = DataDirLock.acquire(tmp_path / "data")
    with pytest.raises(ConfigError, match=rf"in use by another enclave \(pid {os.getpid()}\)"):
        DataDirLock.acquire(tmp_path / "data")
    first.release()
    DataDirLock.acquire(tmp_path / "data").release()


def test_second_serve_on_one_data_dir_is_refused(server: Server) -> None:
    second = veil("serve", "--data-dir", str(server.data_dir), "--port", "0", timeout=300)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"veil serve: error: data directory {server.data_dir} is in use by another enclave "
        f"(pid {server.proc.pid})"
    ]
    assert "serving on" not in second.stdout
    assert server.proc.poll() is None  # the first one is untouched
    assert (server.data_dir / LOCK_FILE).read_text().strip() == str(server.proc.pid)


def test_second_serve_on_a_taken_port_is_refused(
    server: Server, tmp_path: Path, tee_template: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(tee_template, other / "simulated-tee")
    port = server.address.rsplit(":", 1)[1]
    second = veil("serve", "--data-dir", str(other), "--port", port, timeout=300)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1] == (
        f"veil serve: error: could not bind 127.0.0.1:{port} (in use?)"
    )
    assert "serving on" not in second.stdout
    assert server.proc.poll() is None
