"""What a worker process's ``Enclave`` gets from its supervisor instead of making it itself.

``veil serve`` with ``[server] workers = N`` (``veil.enclave._workers``) runs one supervisor and
N worker processes. The supervisor's ``Enclave`` owns the state that must be one per enclave
(the audit log's files, the key epochs, the measurement); each worker's ``Enclave`` is built
with :class:`EnclaveParts`: an audit log that writes through the supervisor, a key ring the
supervisor feeds, a replay store shared by every worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from veil.enclave._keys import KeyEpoch, KeyRing
from veil.enclave._replay import ReplayStore
from veil.enclave.audit import AuditLog

__all__ = ["EnclaveParts"]


@dataclass(frozen=True)
class EnclaveParts:
    """A worker's shared parts. ``fresh_epoch``: the supervisor's current epoch, rotated there
    first when it nears expiry (attestation asks for it); ``intra_op_threads``: ONNX Runtime
    threads per session (the worker's share of the cores)."""

    measurement: bytes
    audit: AuditLog
    keys: KeyRing
    replay: ReplayStore
    fresh_epoch: Callable[[], KeyEpoch]
    intra_op_threads: int = 0
