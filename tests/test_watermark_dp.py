"""Marking during DP training: the regulariser runs through veil.privacy's weight hook.

The hook reads only weights, so the privacy accounting must be exactly that of the same run
without it; the exported model must carry the mark.
"""

from __future__ import annotations

import dataclasses
import warnings
from datetime import UTC, datetime

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sklearn.datasets import load_digits

from veil.privacy import Dataset, ModelSpec, NoiseMode, TrainingConfig, build_model, train
from veil.sdk.errors import InsecureModeWarning, WatermarkError
from veil.watermark import LayerLocator, WatermarkKey, WatermarkPlan, WatermarkRegularizer, verify
from veil.watermark._claim import public_key_bytes

NOW = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)
OWNER = Ed25519PrivateKey.from_private_bytes(bytes([21]) * 32)
KEY = WatermarkKey(bytes([22]) * 32, bytes([23]) * 32)
SPEC = ModelSpec("mlp", (64,), 10, hidden=(64,))
PLAN = WatermarkPlan(
    key=KEY,
    owner_public_key=public_key_bytes(OWNER.public_key()),
    layer=LayerLocator("dense", (64, 64), 0),
    n_bits=64,
)
CONFIG = TrainingConfig(epochs=3, batch_size=50, noise_multiplier=1.0, noise=NoiseMode.FAST, seed=5)

_DIGITS = load_digits()
DATA = Dataset.from_arrays(
    (_DIGITS.data[:1000] / 16.0).astype(np.float32), _DIGITS.target[:1000], sha256="44" * 32
)


def _train(**kw: object):  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureModeWarning)
        return train(DATA, SPEC, CONFIG, **kw)  # type: ignore[arg-type]


def test_mark_embedded_during_dp_training_with_identical_accounting() -> None:
    reg = WatermarkRegularizer(PLAN)
    calls = 0
    hook = reg.training_hook(strength=20.0)

    def counted(model: torch.nn.Module) -> None:
        nonlocal calls
        calls += 1
        hook(model)

    marked = _train(weight_hook=counted)
    plain = _train()
    # the accounting is untouched: every field of the record but the model's digest is equal
    assert marked.record.epsilon == plain.record.epsilon
    assert dataclasses.replace(marked.record, model_sha256="") == dataclasses.replace(
        plain.record, model_sha256=""
    )
    assert calls == marked.record.steps  # once per DP step
    claim = PLAN.claim(OWNER, trigger=None, now=NOW)
    assert verify(marked.onnx, claim, KEY).detected
    unmarked = verify(plain.onnx, claim, KEY)
    assert not unmarked.detected and unmarked.p_value > 1e-3


def test_hook_refuses_a_model_without_the_planned_layer() -> None:
    reg = WatermarkRegularizer(PLAN)
    other = build_model(ModelSpec("mlp", (64,), 10, hidden=(32,)))
    with pytest.raises(WatermarkError, match="no dense layer #0 with weight shape"):
        reg.layer_weight(other)
    assert tuple(reg.layer_weight(build_model(SPEC)).shape) == (64, 64)
