"""Veil model watermarking: a keyed white-box mark in an ONNX model's weights, proven with an
exact binomial p-value, plus a keyed trigger set for black-box checks.

Verification (``verify``, ``verify_trigger``, claims, reports) needs only onnx and numpy;
embedding (``embed_onnx``, ``WatermarkRegularizer``) needs torch and is imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from watermark._claim import ProjectionParams, WatermarkClaim
from watermark._keys import WatermarkKey, message_bits
from watermark._locate import LayerLocator, locate, weight_layers
from watermark._plan import WatermarkPlan
from watermark._pvalue import binomial_tail
from watermark._report import VerificationReport
from watermark._trigger import TriggerParams, derive_trigger_set
from watermark._verify import (
    DEFAULT_THRESHOLD,
    TriggerVerdict,
    WatermarkVerdict,
    onnx_predictor,
    verify,
    verify_trigger,
)

if TYPE_CHECKING:
    from watermark._embed import EmbedResult, embed_onnx
    from watermark._regularizer import WatermarkRegularizer

__all__ = [
    "DEFAULT_THRESHOLD",
    "EmbedResult",
    "LayerLocator",
    "ProjectionParams",
    "TriggerParams",
    "TriggerVerdict",
    "VerificationReport",
    "WatermarkClaim",
    "WatermarkKey",
    "WatermarkPlan",
    "WatermarkRegularizer",
    "WatermarkVerdict",
    "binomial_tail",
    "derive_trigger_set",
    "embed_onnx",
    "locate",
    "message_bits",
    "onnx_predictor",
    "verify",
    "verify_trigger",
    "weight_layers",
]

_LAZY = {
    "EmbedResult": "watermark._embed",
    "embed_onnx": "watermark._embed",
    "WatermarkRegularizer": "watermark._regularizer",
}


def __getattr__(name: str) -> Any:
    """Import the torch-based embedding API only when it is used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'watermark' has no attribute {name!r}")
