"""Book-keeping clipping computes exactly Opacus' flat-clipped per-sample gradient sum."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

from privacy import (
    Dataset,
    ModelSpec,
    NoiseMode,
    TrainingConfig,
    build_model,
    choose_grad_sample_mode,
    train,
)
from privacy._bookkeeping import BookKeepingClipper, supports_bookkeeping
from sdk._errors import ConfigError, InsecureModeWarning

torch.set_num_threads(1)
_D = load_digits()
X = torch.from_numpy((_D.data / 16.0).astype(np.float32))
Y = torch.from_numpy(_D.target)


def reference_clipped_sum(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float
) -> list[torch.Tensor]:
    """One sample at a time with autograd, clipped like Opacus' flat clipping."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        norm = float(torch.sqrt(torch.stack([(g * g).sum() for g in grads]).sum()))
        factor = min(1.0, clip / (norm + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += factor * g
    return total


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec("logreg", (64,), 10),
        ModelSpec("mlp", (64,), 10, hidden=(32, 16), activation="tanh"),
    ],
)
def test_clipped_sum_matches_per_sample_autograd(spec: ModelSpec) -> None:
    torch.manual_seed(0)
    model = build_model(spec)
    x, y = X[:40], Y[:40]
    clip = 0.3  # some samples are clipped, some are not
    loss = BookKeepingClipper(model, clip)(x, y)
    ref = reference_clipped_sum(model, x, y, clip)
    for p, r in zip(model.parameters(), ref, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, r, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        expected = float(F.cross_entropy(model(x), y))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_empty_batch_gives_zero_gradients() -> None:
    model = build_model(ModelSpec("mlp", (64,), 10))
    BookKeepingClipper(model, 1.0)(X[:0], Y[:0])
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_bookkeeping_training_matches_opacus_hooks_training() -> None:
    """Same seeds, same Poisson batches, same noise stream: only the per-sample-gradient
    machinery differs, so the trained models agree to float rounding."""
    ds = Dataset.from_arrays(X[:300].numpy(), Y[:300].numpy(), sha256="44" * 32)
    spec = ModelSpec("mlp", (64,), 10, hidden=(16,))
    params = []
    for mode in ("bk", "hooks"):
        cfg = TrainingConfig(
            epochs=2,
            batch_size=50,
            noise_multiplier=1.0,
            max_grad_norm=0.5,
            grad_sample_mode=mode,
            noise=NoiseMode.FAST,
            seed=9,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureModeWarning)
            result = train(ds, spec, cfg)
        params.append([p.detach().clone() for p in result.model.parameters()])
    for a, b in zip(*params, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_supported_models_and_auto_choice() -> None:
    assert supports_bookkeeping(build_model(ModelSpec("mlp", (64,), 10)))
    assert not supports_bookkeeping(build_model(ModelSpec("cnn", (1, 8, 8), 10)))
    assert not supports_bookkeeping(build_model(ModelSpec("mlp", (64,), 10, norm="group")))
    assert not supports_bookkeeping(nn.Sequential(nn.Linear(4, 2)))  # no flatten first
    assert not supports_bookkeeping(nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False)))
    assert choose_grad_sample_mode(ModelSpec("mlp", (64,), 10)) == "bk"
    assert choose_grad_sample_mode(ModelSpec("logreg", (64,), 10)) == "bk"
    assert choose_grad_sample_mode(ModelSpec("mlp", (64,), 10, norm="batch")) == "ghost"
    assert choose_grad_sample_mode(ModelSpec("cnn", (1, 8, 8), 10)) == "hooks"
    with pytest.raises(ConfigError, match="Linear and parameter-free"):
        BookKeepingClipper(build_model(ModelSpec("cnn", (1, 8, 8), 10)), 1.0)
