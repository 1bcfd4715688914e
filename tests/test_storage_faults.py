"""A full disk during an upload: RESOURCE_EXHAUSTED "storage-full", nothing half-written, no
version registered, and the service keeps serving (issue 10 item 5, the upload half).

The headroom case is real: the configured audit headroom exceeds the free space, so
``ensure_space`` refuses before anything is written. The mid-write case injects ENOSPC at the
``fsync`` of the store's own temporary file (only that file: every other fsync, the audit log's
included, runs for real), after its bytes were written, which is where a full disk shows.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from enclave_support import Served, mlp_model, start

from veil.sdk import RemoteError

warnings.filterwarnings("ignore", message="trusting a test root")
HUGE_HEADROOM = 2**60  # more than any disk; also beyond ext4's file size, so nothing allocates it


def _dataset() -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, x=rng.normal(size=(32, 4)).astype(np.float32), y=np.arange(32) % 3)
    return buf.getvalue()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def full_disk_server(data_dir: Path) -> Iterator[Served]:
    """A server whose audit headroom is larger than the free space: every store write refused."""
    config = data_dir / "config.toml"
    config.write_text(config.read_text() + f"\n[limits]\naudit_headroom_bytes = {HUGE_HEADROOM}\n")
    served = start(data_dir)
    try:
        yield served
    finally:
        served.running.stop(grace=None)


def test_model_upload_into_the_audit_headroom_is_storage_full(full_disk_server: Served) -> None:
    served = full_disk_server
    with served.client() as client:
        with pytest.raises(RemoteError) as err:
            client.upload_model(mlp_model(), "m")
        assert (err.value.code, err.value.reason) == ("RESOURCE_EXHAUSTED", "storage-full")
        assert "headroom" in err.value.detail
        assert client.list_models() == []
    assert served.stored_files() == []
    served.assert_healthy()


def test_dataset_upload_into_the_audit_headroom_is_storage_full(full_disk_server: Served) -> None:
    served = full_disk_server
    with served.client() as client, pytest.raises(RemoteError) as err:
        client.upload_dataset(_dataset(), format="npz")
    assert (err.value.code, err.value.reason) == ("RESOURCE_EXHAUSTED", "storage-full")
    assert _files(served.data_dir / "datasets") == []
    served.assert_healthy()


def _fail_fsync_of(monkeypatch: pytest.MonkeyPatch, under: Path, marker: str) -> Callable[[], int]:
    """Make ``fsync`` raise ENOSPC for temp files under ``under`` whose name holds ``marker``."""
    real_fsync = os.fsync
    hits = 0

    def fsync(fd: int) -> None:
        nonlocal hits
        target = os.readlink(f"/proc/self/fd/{fd}")
        name = os.path.basename(target)
        if target.startswith(str(under)) and name.endswith(".tmp") and marker in name:
            hits += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return lambda: hits


@pytest.mark.parametrize("marker", [".v1.onnx.enc.", ".v1.json."], ids=["blob", "metadata"])
def test_enospc_while_storing_a_model_leaves_nothing_behind(
    served: Served, monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    hits = _fail_fsync_of(monkeypatch, served.data_dir / "models", marker)
    with served.client() as client:
        with pytest.raises(RemoteError) as err:
            client.upload_model(mlp_model(), "m")
        assert (err.value.code, err.value.reason) == ("RESOURCE_EXHAUSTED", "storage-full")
        assert hits() == 1
        assert served.stored_files() == []  # neither the temp file nor the blob is left
        assert client.list_models() == []
        monkeypatch.undo()  # space is back: the next upload works and takes version 1
        info = client.upload_model(mlp_model(), "m")
        assert info.version == 1
        out = client.infer("m", {"x": np.zeros((1, 4), dtype=np.float32)})
        assert out["probs"].shape == (1, 3)
    served.assert_healthy()


@pytest.mark.parametrize("marker", [".enc.", ".json."], ids=["blob", "metadata"])
def test_enospc_while_storing_a_dataset_leaves_nothing_behind(
    served: Served, monkeypatch: pytest.MonkeyPatch, marker: str
) -> None:
    datasets = served.data_dir / "datasets"
    hits = _fail_fsync_of(monkeypatch, datasets, marker)
    with served.client() as client:
        with pytest.raises(RemoteError) as err:
            client.upload_dataset(_dataset(), format="npz")
        assert (err.value.code, err.value.reason) == ("RESOURCE_EXHAUSTED", "storage-full")
        assert hits() == 1
        assert _files(datasets) == []
        monkeypatch.undo()
        info = client.upload_dataset(_dataset(), format="npz")
        assert info.rows == 32
    assert sorted(p.suffix for p in _files(datasets)) == [".enc", ".json"]
    served.assert_healthy()


def test_enospc_on_a_second_upload_of_a_stored_dataset_keeps_the_first(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = served.data_dir / "datasets"
    with served.client() as client:
        first = client.upload_dataset(_dataset(), format="npz")
        _fail_fsync_of(monkeypatch, datasets, ".json.")
        with pytest.raises(RemoteError) as err:
            client.upload_dataset(_dataset(), format="npz")
        assert err.value.reason == "storage-full"
        monkeypatch.undo()
        assert client.budget(first.sha256).epsilon_spent == 0  # still stored and readable
    assert sorted(p.suffix for p in _files(datasets)) == [".enc", ".json"]


def test_interrupted_writes_are_removed_at_startup(data_dir: Path) -> None:
    """Temp files of ``write_atomic`` (``.<name>.*.tmp``) left by a crash are gone after start."""
    planted = [
        data_dir / "datasets" / "default" / f".{'ab' * 32}.enc.k3j9x2.tmp",
        data_dir / "datasets" / "acme" / f".{'cd' * 32}.json.0qw8e1.tmp",
        data_dir / "models" / "default" / "m" / ".v1.onnx.enc.p0o9i8.tmp",
    ]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(4096))
    keep = data_dir / "datasets" / "default" / "notes.tmp"  # not a write_atomic temporary
    keep.write_bytes(b"x")
    served = start(data_dir)
    try:
        assert [p for p in planted if p.exists()] == []
        assert keep.exists()
        served.assert_healthy()
    finally:
        served.running.stop(grace=None)
