"""The auditor's public path: one DP step through veil.privacy.audit_step, checked against a
per-sample-clipped reference computed independently with torch.func (vmap + grad, float64)."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

import veil.privacy
from veil.privacy import (
    GRAD_SAMPLE_MODES,
    AuditedStep,
    ModelSpec,
    NoiseSource,
    audit_step,
    build_model,
    rekey_generator,
)
from veil.sdk.errors import ConfigError

torch.set_num_threads(1)
_D = load_digits()
X = torch.from_numpy((_D.data[:40] / 16.0).astype(np.float32))
Y = torch.from_numpy(_D.target[:40])

SPECS = {
    "logreg": ModelSpec("logreg", (64,), 10),
    "mlp": ModelSpec("mlp", (64,), 10, hidden=(32,), activation="tanh"),
    "mlp-group": ModelSpec("mlp", (64,), 10, hidden=(32,), norm="group"),
    "cnn": ModelSpec("cnn", (1, 8, 8), 10, channels=(4, 8)),
}
# Every (mode, model) pair train() runs: bk has no norm layers, functorch no convolutions.
CASES = [
    (mode, name)
    for mode in GRAD_SAMPLE_MODES
    for name in SPECS
    if not (mode == "bk" and name == "mlp-group") and not (mode == "functorch" and name == "cnn")
]


def reference_clipped_sum(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float
) -> dict[str, torch.Tensor]:
    """sum_i min(1, C / (|g_i| + 1e-6)) g_i with per-sample gradients from torch.func."""
    ref = copy.deepcopy(model).double()
    params = {k: v.detach() for k, v in ref.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(ref, p, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x.double(), y)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    return {k: torch.einsum("i,i...->...", factor, g) for k, g in grads.items()}


def _step(model: nn.Module, mode: str, x: torch.Tensor, **kw: object) -> AuditedStep:
    args: dict[str, object] = {"max_grad_norm": 0.5, "noise_multiplier": 0.0}
    args.update(kw)
    args.setdefault("noise", NoiseSource.fast(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return audit_step(model, x, Y[: len(x)], grad_sample_mode=mode, **args)  # type: ignore[arg-type]


def _input(name: str) -> torch.Tensor:
    return X.reshape(-1, 1, 8, 8) if name == "cnn" else X


@pytest.mark.parametrize(("mode", "name"), CASES)
def test_clipped_sum_matches_the_torch_func_float64_reference(mode: str, name: str) -> None:
    torch.manual_seed(0)
    model = build_model(SPECS[name])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = _step(model, mode, _input(name))
    ref = reference_clipped_sum(model, _input(name), Y, 0.5)
    assert set(step.clipped_sum) == set(ref)
    for k, total in step.clipped_sum.items():
        torch.testing.assert_close(total.double(), ref[k], atol=2e-5, rtol=1e-4)
        # no noise: the update is the clipped sum over the expected batch size
        torch.testing.assert_close(step.update[k], total / 40, atol=1e-7, rtol=1e-6)
    assert step.expected_batch_size == 40 and math.isfinite(step.loss)
    # the caller's model is untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
@pytest.mark.parametrize("secure", [False, True])
def test_injected_noise_is_added_with_the_documented_scale(mode: str, secure: bool) -> None:
    """update * E - clipped_sum is the noise: N(0, (sigma C)^2) per coordinate, the same for
    the same injected source and different for another."""
    torch.manual_seed(1)
    model = build_model(SPECS["mlp"])

    def source(seed: int) -> NoiseSource:
        if secure:
            return NoiseSource.secure(entropy=lambda n: seed.to_bytes(n, "little"))
        return NoiseSource.fast(seed)

    kw = {"noise_multiplier": 2.0, "expected_batch_size": 25}
    a = _step(model, mode, X, noise=source(3), **kw)
    b = _step(model, mode, X, noise=source(3), **kw)
    c = _step(model, mode, X, noise=source(4), **kw)
    noise = torch.cat([(a.update[k] * 25 - a.clipped_sum[k]).flatten() for k in a.update])
    assert noise.numel() > 2000
    assert abs(float(noise.std()) - 2.0 * 0.5) < 0.06 and abs(float(noise.mean())) < 0.05
    for k in a.update:
        assert torch.equal(a.update[k], b.update[k])
    assert any(not torch.equal(a.update[k], c.update[k]) for k in a.update)


def test_secure_noise_is_the_rekeyed_generators_draw() -> None:
    """In book-keeping secure mode the noise is the fused four-Gaussian draw of the noise
    generator rekeyed from the injected entropy (what docs/PRIVACY.md describes)."""
    from veil.privacy._dpoptim import secure_flat_noise  # the reference draw

    torch.manual_seed(2)
    model = build_model(SPECS["logreg"])
    key = bytes(range(32))
    step = _step(
        model, "bk", X, noise_multiplier=1.5, noise=NoiseSource.secure(entropy=lambda n: key[:n])
    )
    gen = torch.Generator()
    rekey_generator(gen, key)
    flat = secure_flat_noise(1.5 * 0.5, sum(p.numel() for p in model.parameters()), gen)
    drawn = torch.cat([(step.update[k] * 40 - step.clipped_sum[k]).flatten() for k in step.update])
    torch.testing.assert_close(drawn, flat, atol=1e-5, rtol=1e-5)


def test_audit_step_is_public_and_refuses_bad_arguments() -> None:
    assert {"audit_step", "AuditedStep", "poisson_schedule"} <= set(veil.privacy.__all__)
    model = build_model(SPECS["logreg"])
    with pytest.raises(ConfigError, match="unknown"):
        _step(model, "ew", X)
    with pytest.raises(ConfigError, match="max_grad_norm"):
        _step(model, "bk", X, max_grad_norm=0.0)
    with pytest.raises(ConfigError, match="noise_multiplier"):
        _step(model, "bk", X, noise_multiplier=-1.0)
    with pytest.raises(ConfigError, match="expected_batch_size"):
        _step(model, "bk", X, expected_batch_size=0)
    with pytest.raises(ConfigError, match="labels"):
        audit_step(
            model, X, Y[:3], max_grad_norm=1.0, noise_multiplier=0.0, noise=NoiseSource.fast(1)
        )
