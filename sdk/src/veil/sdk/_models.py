"""Typed views of what the enclave returns about models."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from veil.sdk.evidence import from_ms
from veil.v1 import models_pb2

__all__ = ["ModelInfo", "TensorInfo", "WatermarkCheck", "WatermarkEmbedding"]


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]  # -1 marks a dynamic dimension


@dataclass(frozen=True)
class ModelInfo:
    """A registered model version: ``ref`` is ``name@version``; ``sha256`` is of the ONNX file."""

    name: str
    version: int
    ref: str
    sha256: str
    size: int
    created_at: datetime
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    @classmethod
    def from_proto(cls, msg: models_pb2.ModelInfo) -> ModelInfo:
        def specs(items: object) -> tuple[TensorInfo, ...]:
            return tuple(
                TensorInfo(name=s.name, dtype=s.dtype, shape=tuple(s.shape))
                for s in items  # type: ignore[attr-defined]
            )

        return cls(
            name=msg.name,
            version=msg.version,
            ref=msg.ref,
            sha256=msg.sha256,
            size=msg.size,
            created_at=from_ms(msg.created_at_ms),
            inputs=specs(msg.inputs),
            outputs=specs(msg.outputs),
        )


@dataclass(frozen=True)
class WatermarkEmbedding:
    """A model marked inside the enclave: the new version and the owner-signed claim."""

    model: ModelInfo
    claim_json: str
    p_value: float
    matches: int
    n_bits: int
    accuracy_before: float
    accuracy_after: float


@dataclass(frozen=True)
class WatermarkCheck:
    """A verdict on a claimed watermark: what was measured, and whether ``p_value < threshold``.

    The one type for both checks: the enclave's (``Client.verify_watermark``) and the offline
    white-box one (``veil.watermark.verify``, which also names the layer it read).
    ``p_value`` is the exact binomial tail P[X >= matches], X ~ Bin(n_bits, 1/2).
    """

    detected: bool
    p_value: float
    matches: int
    n_bits: int
    threshold: float
    model_sha256: str
    claim_sha256: str
    layer_node: str = ""  # the ONNX node whose weights were read; empty when checked remotely

    @property
    def bit_error_rate(self) -> float:
        return 1.0 - self.matches / self.n_bits
