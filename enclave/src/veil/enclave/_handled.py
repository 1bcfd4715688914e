"""What the enclave's desks share: a handled call's answer, and the enclave as the desks see it.

``Enclave`` builds the training and watermark desks and the desks call back into it; both
depend on this module, not on each other, so there is no import cycle between them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from google.protobuf.message import Message

from veil.enclave._config import SYSTEM_LOG, ServerConfig
from veil.enclave._store import ModelRecord, ModelStore
from veil.enclave.audit import AuditLog
from veil.enclave.tee._base import TeeProvider
from veil.sdk.audit import EventType, Outcome
from veil.v1 import models_pb2

__all__ = ["EnclaveContext", "Handled", "model_info"]


@dataclass(frozen=True)
class Handled:
    """A method's answer and what its audit record says about it (digests, never plaintext)."""

    message: Message
    resource: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    model_digest: str | None = None


def model_info(record: ModelRecord) -> models_pb2.ModelInfo:
    def specs(items: Iterable[object]) -> list[models_pb2.TensorSpec]:
        return [
            models_pb2.TensorSpec(name=s.name, dtype=s.dtype, shape=list(s.shape))  # type: ignore[attr-defined]
            for s in items
        ]

    return models_pb2.ModelInfo(
        name=record.name,
        version=record.version,
        ref=record.ref,
        sha256=record.sha256,
        size=record.size,
        created_at_ms=record.created_at_ms,
        inputs=specs(record.inputs),
        outputs=specs(record.outputs),
    )


class EnclaveContext(Protocol):
    """The part of ``Enclave`` a desk uses: configuration, TEE, audit log, model store, clock."""

    config: ServerConfig
    tee: TeeProvider
    audit: AuditLog
    store: ModelStore
    measurement: bytes
    clock: Callable[[], datetime]

    def record(
        self,
        event: EventType,
        *,
        tenant: str = SYSTEM_LOG,
        origin: str = "enclave",
        outcome: Outcome = Outcome.SUCCESS,
        key_id: str | None = None,
        resource: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> int: ...
