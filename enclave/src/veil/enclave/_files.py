"""Durable, atomic file writes: a file is either absent or complete, never half-written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["TEMP_GLOB", "fsync_dir", "remove_temp_files", "write_atomic", "write_private"]

# What ``write_atomic`` leaves behind when the process dies between creating and renaming.
TEMP_GLOB = ".*.tmp"


def fsync_dir(path: Path) -> None:
    """Make a rename or creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write a temporary file beside ``path``, fsync, rename over ``path``, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def remove_temp_files(root: Path) -> int:
    """Delete every ``write_atomic`` temporary under ``root`` (call at startup, before writers).

    A temporary is never the only copy of anything: it is renamed into place only once complete,
    so whatever is left was interrupted and is garbage. Returns how many were removed.
    """
    removed = 0
    for tmp in root.rglob(TEMP_GLOB):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def write_private(path: Path, data: bytes) -> None:
    """Atomically write a secret (mode 0600)."""
    write_atomic(path, data, mode=0o600)
