"""Book-keeping clipping computes exactly Opacus' flat-clipped per-sample gradient sum."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F

from veil.privacy import (
    ENTROPY_BYTES,
    Dataset,
    ModelSpec,
    NoiseMode,
    TrainingConfig,
    build_model,
    choose_grad_sample_mode,
    rekey_generator,
    train,
)
from veil.privacy._bookkeeping import MATERIALISE_BYTES, BookKeepingClipper, supports_bookkeeping
from veil.privacy._dpoptim import FusedNoiseOptimizer, NoiseStream, secure_flat_noise
from veil.privacy._noise import NoiseSource
from veil.sdk.errors import ConfigError, InsecureModeWarning

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
        ModelSpec("cnn", (1, 8, 8), 10, channels=(16, 32)),  # the built-in CNN
        ModelSpec("cnn", (1, 8, 8), 10, channels=(4, 8, 8), activation="tanh"),
    ],
)
# Convolutions materialise per-sample weight gradients when they fit, else take the ghost norm.
@pytest.mark.parametrize("materialise_bytes", [MATERIALISE_BYTES, 0])
def test_clipped_sum_matches_per_sample_autograd(spec: ModelSpec, materialise_bytes: int) -> None:
    torch.manual_seed(0)
    model = build_model(spec)
    x, y = X[:40].reshape(-1, *spec.input_shape), Y[:40]
    clip = 0.3  # some samples are clipped, some are not
    loss = BookKeepingClipper(model, clip, materialise_bytes=materialise_bytes)(x, y)
    ref = reference_clipped_sum(model, x, y, clip)
    for p, r in zip(model.parameters(), ref, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, r, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        expected = float(F.cross_entropy(model(x), y))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 5, 3, stride=2, padding=1),
        nn.Conv2d(3, 4, (3, 2), dilation=(2, 1), padding=(2, 0)),
        nn.Conv2d(9, 6, 2),  # no padding, 9 channels (strided patch gather)
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.Conv2d(16, 32, 3, dilation=2, padding=2),
    ],
)
@pytest.mark.parametrize("materialise_bytes", [MATERIALISE_BYTES, 0])
def test_convolution_geometry_matches_per_sample_autograd(
    conv: nn.Conv2d, materialise_bytes: int
) -> None:
    torch.manual_seed(1)
    size = 9 if conv.stride[0] > 1 or conv.in_channels < 16 else 5
    x = torch.randn(12, conv.in_channels, size, size)
    y = torch.randint(0, 4, (12,))
    model = nn.Sequential(conv, nn.Tanh(), nn.MaxPool2d(2), nn.Flatten())
    model.append(nn.Linear(model(x).shape[1], 4))
    assert supports_bookkeeping(model)
    BookKeepingClipper(model, 0.5, materialise_bytes=materialise_bytes)(x, y)
    ref = reference_clipped_sum(model, x, y, 0.5)
    for p, r in zip(model.parameters(), ref, strict=True):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, r, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_empty_batch_gives_zero_gradients(kind: str) -> None:
    spec = ModelSpec(kind, (64,) if kind == "mlp" else (1, 8, 8), 10)
    model = build_model(spec)
    loss = BookKeepingClipper(model, 1.0)(X[:0].reshape(0, *spec.input_shape), Y[:0])
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    assert torch.isnan(loss)


@pytest.mark.parametrize(
    "spec",
    [ModelSpec("mlp", (64,), 10, hidden=(16,)), ModelSpec("cnn", (1, 8, 8), 10, channels=(4, 8))],
)
def test_bookkeeping_training_matches_opacus_hooks_training(spec: ModelSpec) -> None:
    """Same seeds, same Poisson batches, same noise stream: only the per-sample-gradient
    machinery differs, so the trained models agree to float rounding."""
    ds = Dataset.from_arrays(X[:300].numpy(), Y[:300].numpy(), sha256="44" * 32)
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
    assert supports_bookkeeping(build_model(ModelSpec("cnn", (1, 8, 8), 10)))
    assert not supports_bookkeeping(build_model(ModelSpec("mlp", (64,), 10, norm="group")))
    assert not supports_bookkeeping(build_model(ModelSpec("cnn", (1, 8, 8), 10, norm="batch")))
    assert not supports_bookkeeping(nn.Sequential(nn.Linear(4, 2)))  # no flatten first
    assert not supports_bookkeeping(nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False)))
    conv = nn.Conv2d(1, 2, 3)
    assert not supports_bookkeeping(nn.Sequential(nn.Flatten(), conv))  # conv after flatten
    assert not supports_bookkeeping(nn.Sequential(conv, nn.Linear(4, 2)))  # never flattened
    for bad in (
        nn.Conv2d(1, 2, 3, bias=False),
        nn.Conv2d(2, 2, 3, groups=2),
        nn.Conv2d(1, 2, 3, padding="same"),
        nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
    ):
        assert not supports_bookkeeping(nn.Sequential(bad, nn.Flatten(), nn.Linear(4, 2)))
    assert choose_grad_sample_mode(ModelSpec("mlp", (64,), 10)) == "bk"
    assert choose_grad_sample_mode(ModelSpec("logreg", (64,), 10)) == "bk"
    assert choose_grad_sample_mode(ModelSpec("mlp", (64,), 10, norm="batch")) == "ghost"
    assert choose_grad_sample_mode(ModelSpec("cnn", (1, 8, 8), 10)) == "bk"
    assert choose_grad_sample_mode(ModelSpec("cnn", (1, 8, 8), 10, norm="group")) == "hooks"
    with pytest.raises(ConfigError, match="Conv2d, then Linear"):
        BookKeepingClipper(build_model(ModelSpec("cnn", (1, 8, 8), 10, norm="group")), 1.0)


def test_secure_flat_noise_is_gaussian_with_the_given_std() -> None:
    gen = torch.Generator()
    gen.manual_seed(3)
    noise = secure_flat_noise(2.5, 200_000, gen)
    assert noise.shape == (200_000,)
    assert abs(float(noise.mean())) < 0.03
    assert float(noise.std()) == pytest.approx(2.5, rel=0.01)
    # Excess kurtosis of a Gaussian is 0 (a sum of four uniforms, say, would give -0.3).
    z = (noise - noise.mean()) / noise.std()
    assert abs(float((z**4).mean()) - 3.0) < 0.1


def _counting_entropy() -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom: 1, 2, 3, ... as little-endian bytes."""
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "little")


@pytest.mark.parametrize("prefetch", [False, True])
def test_fused_optimizer_adds_noise_once_and_scales_like_opacus(prefetch: bool) -> None:
    """p.grad after a step is (clipped sum + N(0, (sigma C)^2)) / expected batch, the noise
    drawn in one flat secure draw right after a reseed; the accountant hook runs once per
    step. Prefetching changes when the draw happens, not what is drawn."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp", (64,), 10, hidden=(8,)))
    params = list(model.parameters())
    source = NoiseSource.secure(entropy=_counting_entropy())  # seeds 1 (sampling), 2 (noise)
    opt = FusedNoiseOptimizer(
        torch.optim.SGD(params, lr=0.0),
        noise_multiplier=1.3,
        max_grad_norm=0.7,
        expected_batch_size=25,
        loss_reduction="mean",
        generator=source.noise,
    )
    stream = opt.use_noise_stream(source, prefetch=prefetch)
    steps: list[int] = []
    opt.attach_step_hook(lambda _opt: steps.append(1))
    sizes = [p.numel() for p in params]
    try:
        for seed in (3, 4):  # each draw reseeds from the next entropy value first
            opt.zero_grad(set_to_none=True)
            BookKeepingClipper(model, 0.7)(X[:30], Y[:30])
            clipped = [p.grad.clone() for p in params if p.grad is not None]
            opt.step()
            gen = torch.Generator()
            rekey_generator(gen, seed.to_bytes(ENTROPY_BYTES, "little"))
            flat = secure_flat_noise(1.3 * 0.7, sum(sizes), gen)
            for p, c, n in zip(params, clipped, torch.split(flat, sizes), strict=True):
                assert p.grad is not None
                torch.testing.assert_close(p.grad, (c + n.view_as(p)) / 25, atol=1e-6, rtol=1e-5)
    finally:
        stream.close()
    assert steps == [1, 1]


def test_noise_stream_reuses_three_buffers_and_reports_worker_errors() -> None:
    shapes = [torch.Size([5])]
    stream = NoiseStream(NoiseSource.secure(), 1.0, shapes, prefetch=True, steps=None)
    try:
        first = stream.next()[0]
        kept = first.clone()
        second = stream.next()[0]
        assert torch.equal(first, kept)  # still valid after one more draw
        third = stream.next()[0]
        fourth = stream.next()[0]  # the fourth draw reuses the first one's memory
        ptrs = [t.data_ptr() for t in (first, second, third)]
        assert len(set(ptrs)) == 3 and fourth.data_ptr() == first.data_ptr()
    finally:
        stream.close()

    def broken(_n: int) -> bytes:
        raise OSError("entropy source gone")

    failing = NoiseSource.secure()
    failing._entropy = broken  # the worker's next reseed fails
    stream = NoiseStream(failing, 1.0, shapes, prefetch=True, steps=3)
    try:
        with pytest.raises(OSError, match="entropy source gone"):
            stream.next()
    finally:
        stream.close()


def test_secure_fused_optimizer_refuses_to_step_without_a_noise_stream() -> None:
    model = build_model(ModelSpec("logreg", (64,), 10))
    opt = FusedNoiseOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=10,
        loss_reduction="mean",
    )
    opt.secure_mode = True
    BookKeepingClipper(model, 1.0)(X[:10], Y[:10])
    with pytest.raises(RuntimeError, match="use_noise_stream"):
        opt.step()
    with pytest.raises(ValueError, match="secure noise"):
        NoiseStream(NoiseSource.fast(1), 1.0, [torch.Size([10])], prefetch=False)


def test_noise_stream_prefetches_exactly_the_planned_draws_then_draws_on_demand() -> None:
    calls: list[int] = []

    def entropy(n: int) -> bytes:
        calls.append(n)
        return len(calls).to_bytes(n, "little")

    source = NoiseSource.secure(entropy=entropy)  # two seeds: sampling, noise
    shapes = [torch.Size([3, 2]), torch.Size([4])]
    stream = NoiseStream(source, 0.5, shapes, prefetch=True, steps=3)
    try:
        # (copies: the stream reuses its buffers once a draw has been used)
        draws = [[n.clone() for n in stream.next()] for _ in range(3)]
        assert len(calls) == 2 + 3  # one reseed per planned draw, none beyond
        extra = stream.next()  # past the plan: drawn on demand, still reseeded first
        assert len(calls) == 2 + 4
    finally:
        stream.close()
    for seed, noise in zip((3, 4, 5, 6), [*draws, extra], strict=True):
        gen = torch.Generator()
        rekey_generator(gen, seed.to_bytes(ENTROPY_BYTES, "little"))
        flat = secure_flat_noise(0.5, 10, gen)
        assert [n.shape for n in noise] == shapes
        torch.testing.assert_close(torch.cat([n.flatten() for n in noise]), flat)
