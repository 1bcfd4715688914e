"""Disk headroom kept for the audit log: a preallocated file released when the disk fills up.

``HeadroomReserve(path, size)`` holds ``size`` bytes of real disk blocks in one file in the audit
directory. When an audit append fails because the disk is full, the log calls ``release()``: the
file is deleted, its blocks go back to the filesystem, and the append is retried into them, so
the records that report the emergency still get written. ``ensure()`` re-creates the reserve once
the disk has room again (the checkpoint thread calls it); until then it stays released.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

__all__ = ["RESERVE_FILE", "HeadroomReserve"]

_log = logging.getLogger("veil.audit")
RESERVE_FILE = ".headroom"


class HeadroomReserve:
    """A preallocated file of ``size`` bytes that can be given back to the disk at once."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._lock = threading.Lock()
        self._warned = False  # one warning per shortage, not one per retry

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size == self.size
        except FileNotFoundError:
            return False

    def ensure(self) -> bool:
        """Create (or complete) the reserve; ``False`` if the disk has no room for it yet."""
        if self.size <= 0:
            return True
        with self._lock:
            if self.held:
                return True
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self.size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self.path.unlink(missing_ok=True)  # a partial reserve would only eat space
                if not self._warned:
                    _log.warning("audit headroom reserve not (re)created: %s", exc.strerror or exc)
                    self._warned = True
                return False
            _log.info("audit headroom reserve of %d bytes in place", self.size)
            self._warned = False
            return True

    def release(self) -> bool:
        """Give the reserve's blocks back to the disk; ``True`` if anything was freed."""
        with self._lock:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
            _log.error("disk full: released the audit headroom reserve (%d bytes)", self.size)
            return True
