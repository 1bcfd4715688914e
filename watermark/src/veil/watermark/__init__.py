"""Veil model watermarking: a keyed white-box mark in an ONNX model's weights, proven with an
exact binomial p-value, plus a keyed trigger set for black-box checks.

Verification (``verify``, ``verify_trigger``, claims, reports) needs only onnx and numpy;
embedding (``embed_onnx``, ``WatermarkRegularizer``) needs torch. Every name is imported on first
use, so ``import veil.watermark`` (and the ``veil`` CLI that registers ``veil.watermark.cli``)
costs nothing and works even where onnx or torch is not installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from veil.watermark._claim import ProjectionParams, WatermarkClaim
    from veil.watermark._embed import EmbedResult, embed_onnx
    from veil.watermark._keys import WatermarkKey, message_bits
    from veil.watermark._locate import LayerLocator, locate, weight_layers
    from veil.watermark._plan import WatermarkPlan
    from veil.watermark._pvalue import binomial_tail
    from veil.watermark._regularizer import WatermarkRegularizer
    from veil.watermark._report import VerificationReport
    from veil.watermark._trigger import TriggerParams, derive_trigger_set
    from veil.watermark._verify import (
        DEFAULT_THRESHOLD,
        TriggerVerdict,
        WatermarkVerdict,
        onnx_predictor,
        verify,
        verify_trigger,
    )

__all__ = [
    "DEFAULT_EMBED_EPOCHS",
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

_HOME = {
    "DEFAULT_EMBED_EPOCHS": "_defaults",
    "DEFAULT_THRESHOLD": "_verify",
    "EmbedResult": "_embed",
    "LayerLocator": "_locate",
    "ProjectionParams": "_claim",
    "TriggerParams": "_trigger",
    "TriggerVerdict": "_verify",
    "VerificationReport": "_report",
    "WatermarkClaim": "_claim",
    "WatermarkKey": "_keys",
    "WatermarkPlan": "_plan",
    "WatermarkRegularizer": "_regularizer",
    "WatermarkVerdict": "_verify",
    "binomial_tail": "_pvalue",
    "derive_trigger_set": "_trigger",
    "embed_onnx": "_embed",
    "locate": "_locate",
    "message_bits": "_keys",
    "onnx_predictor": "_verify",
    "verify": "_verify",
    "verify_trigger": "_verify",
    "weight_layers": "_locate",
}


def __getattr__(name: str) -> Any:
    """Import each public name from its private module on first use."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'watermark' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"veil.watermark.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
