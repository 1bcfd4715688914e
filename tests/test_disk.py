"""Free-space checks (``veil.enclave._disk``): headroom is respected, full-disk errors are
recognised."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from veil.enclave._disk import ensure_space, is_disk_full
from veil.enclave._errors import StorageFull


def _free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def test_ensure_space_passes_when_plenty_is_free(tmp_path: Path) -> None:
    ensure_space(tmp_path, 1, headroom=0)


def test_ensure_space_refuses_what_would_eat_the_headroom(tmp_path: Path) -> None:
    free = _free_bytes(tmp_path)
    with pytest.raises(StorageFull, match="headroom"):
        ensure_space(tmp_path, 1, headroom=free + (1 << 30))


def test_ensure_space_refuses_a_write_larger_than_the_disk(tmp_path: Path) -> None:
    free = _free_bytes(tmp_path)
    with pytest.raises(StorageFull):
        ensure_space(tmp_path, free + (1 << 30), headroom=0)


def test_ensure_space_message_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(StorageFull) as info:
        ensure_space(tmp_path, 1 << 62, headroom=1)
    assert "\n" not in str(info.value)


def test_ensure_space_uses_the_nearest_existing_folder(tmp_path: Path) -> None:
    ensure_space(tmp_path / "not" / "yet" / "made", 1, headroom=0)
    with pytest.raises(StorageFull):
        ensure_space(tmp_path / "not" / "yet", 1 << 62, headroom=0)


def test_ensure_space_rejects_negative_figures(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ensure_space(tmp_path, -1, headroom=0)
    with pytest.raises(ValueError):
        ensure_space(tmp_path, 0, headroom=-1)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_is_disk_full_recognises_full_disk_and_quota(code: int) -> None:
    assert is_disk_full(OSError(code, os.strerror(code)))


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.EIO, "I/O error"),
        OSError(errno.EACCES, "denied"),
        OSError("no errno"),
        ValueError("not an OSError"),
    ],
)
def test_is_disk_full_rejects_other_errors(exc: BaseException) -> None:
    assert not is_disk_full(exc)
