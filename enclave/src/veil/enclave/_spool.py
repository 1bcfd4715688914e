"""Upload bytes in bounded memory: the first ``memory_bytes`` in RAM, the rest sealed on disk.

An upload that outgrows its memory allowance spills to a file under ``DATA_DIR/tmp/``. The file
is unlinked as soon as it is opened (nothing is left behind, even by a crash) and every piece
written to it is sealed with AES-256-GCM under a key that lives only in this object's memory,
with the piece's number as nonce and associated data: the host sees ciphertext it cannot open,
reorder or truncate unnoticed. Total upload RAM is then at most ``memory_bytes`` per upload in
progress, plus the one being completed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.enclave._disk import disk_full_is_storage_full, ensure_space
from veil.sdk.errors import DecryptionError

__all__ = ["SPOOL_DIR", "UploadBuffer", "remove_spool_files"]

SPOOL_DIR = "tmp"
_TAG = 16


def remove_spool_files(data_dir: Path) -> int:
    """Delete whatever an earlier run left in ``DATA_DIR/tmp/``; returns how many entries."""
    folder = data_dir / SPOOL_DIR
    removed = 0
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


class UploadBuffer:
    """The bytes of one upload so far; ``close`` (idempotent) drops them, file included."""

    def __init__(self, data_dir: Path, *, memory_bytes: int, expected: int, headroom: int) -> None:
        self._folder = data_dir / SPOOL_DIR
        self._memory_bytes = memory_bytes
        self._expected = expected  # what the header announced: the disk must have room for it
        self._headroom = headroom
        self._memory = bytearray()
        self._size = 0
        self._file: int | None = None
        self._aead: AESGCM | None = None
        self._pieces: list[int] = []  # plaintext length of each sealed piece, in order
        self._closed = False

    def __len__(self) -> int:
        return self._size

    @property
    def spilled(self) -> int:
        """Bytes held on disk (sealed) rather than in memory."""
        return self._size - len(self._memory)

    def append(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("upload buffer is closed")
        if self._file is None and len(self._memory) + len(data) <= self._memory_bytes:
            self._memory += data
        else:
            self._spill(data)
        self._size += len(data)

    def _spill(self, data: bytes) -> None:
        if self._file is None:
            remaining = max(self._expected - self._size, len(data))
            needed = remaining + _TAG * (remaining // max(len(data), 1) + 1)
            with disk_full_is_storage_full("the upload"):
                self._folder.mkdir(mode=0o700, exist_ok=True)
            ensure_space(self._folder, needed, headroom=self._headroom)
            with disk_full_is_storage_full("the upload"):
                fd, name = tempfile.mkstemp(dir=self._folder, prefix="upload-", suffix=".spool")
            os.unlink(name)  # anonymous from now on: closing the descriptor frees the blocks
            self._file = fd
            self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        assert self._aead is not None
        index = len(self._pieces).to_bytes(12, "big")
        sealed = self._aead.encrypt(index, data, index)
        with disk_full_is_storage_full("the upload"):
            _write_all(self._file, sealed)
        self._pieces.append(len(data))

    def getvalue(self) -> bytes:
        """Every byte appended, in order (the spilled part opened and checked piece by piece)."""
        if self._closed:
            raise ValueError("upload buffer is closed")
        if self._file is None:
            return bytes(self._memory)
        assert self._aead is not None
        parts = [bytes(self._memory)]
        offset = 0
        for i, length in enumerate(self._pieces):
            sealed = os.pread(self._file, length + _TAG, offset)
            offset += len(sealed)
            index = i.to_bytes(12, "big")
            try:
                parts.append(self._aead.decrypt(index, sealed, index))
            except Exception as exc:  # InvalidTag, or a short read of a damaged file
                raise DecryptionError("spooled upload data was altered on disk") from exc
        return b"".join(parts)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._memory = bytearray()
        self._aead = None
        if self._file is not None:
            os.close(self._file)
            self._file = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
