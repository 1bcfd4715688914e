"""The C allocator's settings for a server that moves megabyte payloads.

glibc serves an allocation above its mmap threshold (128 KiB at start, raised dynamically up to
32 MiB) with a fresh ``mmap`` and trims freed memory at the top of the heap above its trim
threshold. A sealed request of 1 MB is copied a few times on its way (gRPC's buffer, the
ciphertext, the plaintext, the tensor), and with the defaults every copy lands in fresh pages:
one page fault per 4 KiB, about 0.4 ms per megabyte on a VM, 15x the copy itself. Keeping such
buffers in the heap (mmap threshold above the largest message, a trim threshold that does not
return a request's worth of memory to the kernel after every call) removes the faults; freed
memory is reused by the next request instead. Memory stays bounded: the heap keeps at most
``trim_bytes`` of free memory at its top per arena.

``tune_allocator`` is called once by ``veil serve`` at start; it does nothing off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from dataclasses import dataclass

__all__ = ["AllocatorTuning", "tune_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MiB = 1024 * 1024
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MiB on 64-bit).
DEFAULT_MMAP_BYTES = 32 * MiB
DEFAULT_TRIM_BYTES = 128 * MiB

log = logging.getLogger("veil.enclave")


@dataclass(frozen=True)
class AllocatorTuning:
    """What ``tune_allocator`` set (``applied`` False where the C library is not glibc)."""

    applied: bool
    mmap_bytes: int = 0
    trim_bytes: int = 0


def tune_allocator(
    *, mmap_bytes: int = DEFAULT_MMAP_BYTES, trim_bytes: int = DEFAULT_TRIM_BYTES
) -> AllocatorTuning:
    """Keep payload-sized buffers in the heap (glibc ``mallopt``); a no-op elsewhere."""
    name = ctypes.util.find_library("c")
    if name is None:
        return AllocatorTuning(False)
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return AllocatorTuning(False)
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, mmap_bytes)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_bytes)
    )
    if not applied:
        log.warning("could not tune the C allocator (mallopt refused); payload copies page-fault")
    return AllocatorTuning(applied, mmap_bytes, trim_bytes)
