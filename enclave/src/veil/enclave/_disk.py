"""Free-space checks before writing, and recognising a full disk when a write fails anyway."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from veil.enclave._errors import StorageFull

__all__ = ["disk_full_is_storage_full", "ensure_space", "is_disk_full"]

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def ensure_space(directory: Path, needed: int, *, headroom: int) -> None:
    """Raise ``StorageFull`` unless writing ``needed`` bytes leaves ``headroom`` bytes free.

    ``directory`` (or its nearest existing ancestor) names the filesystem; the free figure is
    what an unprivileged writer may use (``f_bavail``), so root's reserve is not counted.
    """
    if needed < 0 or headroom < 0:
        raise ValueError("needed and headroom must not be negative")
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    stats = os.statvfs(probe)
    free = stats.f_bavail * stats.f_frsize
    if free - needed < headroom:
        raise StorageFull(
            f"storage full: writing {needed} bytes would leave {max(free - needed, 0)} bytes free,"
            f" below the {headroom}-byte headroom kept for the audit log"
        )


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` is an ``OSError`` saying the disk or the quota is full."""
    return isinstance(exc, OSError) and exc.errno in _FULL


@contextmanager
def disk_full_is_storage_full(what: str) -> Iterator[None]:
    """Turn a full disk or quota met inside the block into ``StorageFull`` naming ``what``.

    ``what`` is generic ("the model"): the message may travel in clear.
    """
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            raise StorageFull(f"storage full: {what} could not be written") from exc
        raise
