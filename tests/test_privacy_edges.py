"""DP-SGD at the edges (issue 14): extreme rows leave no NaN trace, full-entropy rekeys, exact
schedules for every dataset and batch size, the feature range, the training device."""

from __future__ import annotations

import json
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.privacy import (
    DEFAULT_FEATURE_RANGE,
    ENTROPY_BYTES,
    GRAD_SAMPLE_MODES,
    AccountantKind,
    Dataset,
    ModelSpec,
    NoiseMode,
    NoiseSource,
    TrainingConfig,
    TrainingRecord,
    audit_step,
    build_model,
    load_dataset,
    plan_training,
    poisson_schedule,
    rekey_generator,
    train,
)
from veil.sdk.errors import ConfigError

torch.set_num_threads(1)

WIDE = (-3.4e38, 3.4e38)  # a declared range that admits the adversarial rows below
LOGREG = ModelSpec("logreg", (4,), 2)
GROUP_MLP = ModelSpec("mlp", (4,), 2, hidden=(16,), norm="group")
# (mode, model) pairs train() accepts: book-keeping covers models without a norm layer.
MODE_SPECS = [
    *((mode, LOGREG) for mode in GRAD_SAMPLE_MODES),
    *((mode, GROUP_MLP) for mode in GRAD_SAMPLE_MODES if mode != "bk"),
]


def _rows(n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    return x, np.arange(n) % 2


def _train(
    x: np.ndarray, y: np.ndarray, spec: ModelSpec, mode: str, **kw: object
) -> torch.nn.Module:
    ds = Dataset.from_arrays(x, y, sha256="0" * 64, feature_range=WIDE)
    cfg_kw: dict[str, object] = {
        "epochs": 1,
        "batch_size": len(y),
        "noise_multiplier": 1.0,
        "seed": 5,
        "noise": NoiseMode.FAST,
        "grad_sample_mode": mode,
    }
    cfg_kw.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(ds, spec, TrainingConfig(**cfg_kw)).model  # type: ignore[arg-type]


def _finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# -- 1. no NaN membership leak ------------------------------------------------------------


def test_issue14_bookkeeping_zero_gradient_huge_row_leaves_weights_finite() -> None:
    """The issue's reproduction: logreg, 8 rows, x[0] = 1e20 labelled as the initial model
    predicts it, seed 5: book-keeping gave 0 * inf = NaN in the norm and all-NaN weights."""
    x, y = _rows()
    x[0] = 1e20
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        initial = build_model(LOGREG)
    y[0] = int(initial(torch.from_numpy(x[:1])).argmax())
    assert _finite(_train(x, y, LOGREG, "bk"))
    assert _finite(_train(x, y, LOGREG, "auto"))


@pytest.mark.parametrize(("mode", "spec"), MODE_SPECS, ids=lambda v: getattr(v, "kind", v))
@pytest.mark.parametrize("value", [3e38, -3e38, 1e20])
def test_issue14_forward_overflow_rows_leave_weights_finite(
    mode: str, spec: ModelSpec, value: float
) -> None:
    """A row near float32's maximum (1e20 with a GroupNorm MLP) overflowed the forward pass of
    every mode and the released model came back NaN."""
    x, y = _rows()
    x[0] = value
    assert _finite(_train(x, y, spec, mode))


_adversarial = st.sampled_from([1e20, -1e20, 3e38, -3.4e38, 1e-38, -1e-45, 0.0, 1.0, 2e19])


@pytest.mark.parametrize(("mode", "spec"), MODE_SPECS, ids=lambda v: getattr(v, "kind", v))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_released_weights_are_finite_whatever_rows_are_sampled(
    mode: str, spec: ModelSpec, data: st.DataObject
) -> None:
    """Property: adversarial rows (huge, tiny and mixed) anywhere in the data, two Poisson
    epochs with momentum: the released weights are finite in every mode."""
    x, y = _rows(10)
    cells = data.draw(
        st.lists(st.tuples(st.integers(0, 9), st.integers(0, 3), _adversarial), max_size=12)
    )
    for row, col, value in cells:
        x[row, col] = value
    model = _train(x, y, spec, mode, batch_size=5, epochs=2, momentum=0.9)
    assert _finite(model)


@pytest.mark.parametrize(("mode", "spec"), MODE_SPECS, ids=lambda v: getattr(v, "kind", v))
@pytest.mark.parametrize("value", [1e20, 3e38])
def test_a_non_finite_sample_contributes_exactly_nothing(
    mode: str, spec: ModelSpec, value: float
) -> None:
    """A row whose loss or gradient norm overflows float32 (both do at 1e20 and 3e38): the
    clipped sum with it equals the clipped sum without it — its contribution is exactly zero,
    not NaN, so the sensitivity stays at most C."""
    x, y = _rows()
    x[0] = value
    torch.manual_seed(3)
    model = build_model(spec)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    kw = {"max_grad_norm": 1.0, "noise_multiplier": 0.0, "noise": NoiseSource.fast(1)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        poisoned = audit_step(model, xt, yt, grad_sample_mode=mode, **kw)  # type: ignore[arg-type]
        clean = audit_step(model, xt[1:], yt[1:], grad_sample_mode=mode, **kw)  # type: ignore[arg-type]
    for name, total in poisoned.clipped_sum.items():
        assert torch.isfinite(total).all()
        torch.testing.assert_close(total, clean.clipped_sum[name], atol=1e-6, rtol=1e-5)


# -- the feature range ---------------------------------------------------------------------


def test_default_feature_range_refuses_the_issue_rows_with_a_precise_error() -> None:
    x, y = _rows()
    x[3, 2] = 1e20
    with pytest.raises(ConfigError) as info:
        Dataset.from_arrays(x, y, sha256="0" * 64)
    assert str(info.value) == (
        "dataset feature 1e+20 (row 3, feature 2) lies outside the feature range "
        "[-1e+09, 1e+09]; rescale the data or declare a wider feature_range"
    )
    csv = b"a,b,label\n0.5,1,0\n-2e10,0,1\n"
    with pytest.raises(ConfigError, match=r"-2e\+10 \(row 1, feature 0\) lies outside"):
        load_dataset(csv, "csv")


def test_a_declared_feature_range_is_enforced_and_kept() -> None:
    csv = b"a,b,label\n0.5,1,0\n0,0.25,1\n"
    ds = load_dataset(csv, "csv", feature_range=(0, 1))
    assert ds.feature_range == (0.0, 1.0)
    assert load_dataset(csv, "csv").feature_range == DEFAULT_FEATURE_RANGE
    with pytest.raises(
        ConfigError, match=r"feature 1 \(row 0, feature 1\) lies outside .*\[0, 0.5\]"
    ):
        load_dataset(csv, "csv", feature_range=(0, 0.5))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ((1.0, 1.0), "low < high"),
        ((2.0, 1.0), "low < high"),
        ((float("-inf"), 1.0), "finite"),
        ((0.0, float("nan")), "finite"),
        ((-1e39, 1.0), "float32"),
        ((0, True), "numbers"),
        ((0.0,), r"\(low, high\)"),
        (None.__class__, r"\(low, high\)"),
    ],
)
def test_bad_declared_feature_ranges_are_refused(bad: object, match: str) -> None:
    x, y = _rows()
    with pytest.raises(ConfigError, match=match):
        Dataset.from_arrays(x, y, sha256="0" * 64, feature_range=bad)  # type: ignore[arg-type]


def test_the_feature_range_and_device_are_in_the_record() -> None:
    x, y = _rows(20)
    ds = Dataset.from_arrays(x, y, sha256="0" * 64, feature_range=(-5, 5))
    cfg = TrainingConfig(
        epochs=1, batch_size=10, noise_multiplier=1.0, seed=1, noise=NoiseMode.FAST
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = train(ds, LOGREG, cfg).record
    device = "cuda" if torch.cuda.is_available() else "cpu"  # chosen automatically
    assert (record.feature_min, record.feature_max, record.device) == (-5.0, 5.0, device)
    raw = json.loads(record.to_json())
    assert (raw["feature_min"], raw["feature_max"], raw["device"]) == (-5, 5, device)
    assert TrainingRecord.from_json(record.to_json()) == record
    del raw["device"]
    with pytest.raises(ConfigError, match="device"):
        TrainingRecord.from_json(json.dumps(raw))


# -- 2. full-entropy rekeys ----------------------------------------------------------------


def _streams(key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """A secure source's first sampling and noise draws after rekeying from ``key``."""
    src = NoiseSource.secure(entropy=lambda n: key[:n])
    src.before_sampling()
    src.before_noise()
    return torch.rand(16, generator=src.sampling), torch.randn(16, generator=src.noise)


def test_flipping_any_single_bit_of_the_entropy_changes_both_streams() -> None:
    key = bytes(range(7, 7 + ENTROPY_BYTES))
    base_sampling, base_noise = _streams(key)
    assert torch.equal(_streams(key)[0], base_sampling)  # equal entropy, equal streams
    for bit in range(8 * ENTROPY_BYTES):
        flipped = bytearray(key)
        flipped[bit // 8] ^= 1 << (bit % 8)
        sampling, noise = _streams(bytes(flipped))
        assert not torch.equal(sampling, base_sampling), bit
        assert not torch.equal(noise, base_noise), bit


def test_issue14_high_seed_bits_are_not_dropped() -> None:
    """The old reseed passed 8 bytes to manual_seed, which keeps 32 bits on CPU: entropy
    differing only in bits 32..63 gave identical noise, sampling and models."""
    low = bytes(ENTROPY_BYTES)
    high = bytearray(low)
    high[5] = 0x40  # bit 46
    assert not torch.equal(_streams(low)[1], _streams(bytes(high))[1])
    assert not torch.equal(_streams(low)[0], _streams(bytes(high))[0])


def test_each_rekey_reads_256_fresh_bits_and_refuses_short_entropy() -> None:
    asked: list[int] = []

    def entropy(n: int) -> bytes:
        asked.append(n)
        return bytes(n)

    NoiseSource.secure(entropy=entropy)
    assert asked == [32, 32] and ENTROPY_BYTES * 8 >= 128
    with pytest.raises(RuntimeError, match="gave 8 bytes"):
        NoiseSource.secure(entropy=lambda n: bytes(8))
    with pytest.raises(ValueError, match="at least 16 bytes"):
        rekey_generator(torch.Generator(), bytes(15))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rekey_uses_key_and_offset() -> None:
    g = torch.Generator(device="cuda")
    key = bytes(range(ENTROPY_BYTES))
    rekey_generator(g, key)
    a = torch.randn(8, device="cuda", generator=g)
    rekey_generator(g, key)
    assert torch.equal(a, torch.randn(8, device="cuda", generator=g))
    for bit in range(8 * ENTROPY_BYTES):
        flipped = bytearray(key)
        flipped[bit // 8] ^= 1 << (bit % 8)
        rekey_generator(g, bytes(flipped))
        assert not torch.equal(a, torch.randn(8, device="cuda", generator=g)), bit


# -- 3. exact schedules --------------------------------------------------------------------


def test_schedule_is_exact_for_every_dataset_and_batch_size() -> None:
    """Property over N in 1..5000 and every batch size 1..N (larger ones give k = 1):
    k = ceil(N / b) and floor(N / k) >= 1, in exact integer arithmetic."""
    for n in range(1, 5001):
        b = np.arange(1, n + 1, dtype=np.int64)
        k, expected = poisson_schedule(n, b)
        assert np.all((k - 1) * b < n) and np.all(n <= k * b)  # k = ceil(n / b)
        assert np.all(expected * k <= n) and np.all(n < (expected + 1) * k)  # floor(n / k)
        assert np.all(expected >= 1)
    for bad in ((0, 1), (5, 0), (-1, 3)):
        with pytest.raises(ConfigError, match="Poisson schedule"):
            poisson_schedule(*bad)


@settings(deadline=None)
@given(n=st.integers(1, 5000), data=st.data())
def test_schedule_matches_exact_fractions(n: int, data: st.DataObject) -> None:
    b = data.draw(st.integers(1, n + 10))
    k, expected = poisson_schedule(n, b)
    assert k == -(-Fraction(n) // b) and expected == Fraction(n, k).__floor__() >= 1
    cfg = TrainingConfig(
        batch_size=b, noise_multiplier=1.0, epochs=1, accountant=AccountantKind.RDP
    )
    plan = plan_training(n, cfg)
    assert plan.steps_per_epoch == k and plan.sample_rate == 1.0 / k


@pytest.mark.parametrize("mode", ["bk", "hooks", "functorch", "ghost"])
def test_issue14_49_rows_in_batches_of_one_train_finite(mode: str) -> None:
    """int(49 * (1/49)) is 0: book-keeping raised ZeroDivisionError, hooks gave a non-finite
    model."""
    x = np.random.default_rng(1).uniform(-1, 1, size=(49, 4)).astype(np.float32)
    y = np.arange(49) % 2
    assert _finite(_train(x, y, LOGREG, mode, batch_size=1))


# -- 5. device -----------------------------------------------------------------------------


def test_a_noise_source_on_another_device_is_refused() -> None:
    x, y = _rows()
    ds = Dataset.from_arrays(x, y, sha256="0" * 64)
    cfg = TrainingConfig(epochs=1, batch_size=4, noise_multiplier=1.0, seed=1, noise=NoiseMode.FAST)
    with pytest.raises(ConfigError, match="draws on cpu but training runs on meta"):
        train(ds, LOGREG, cfg, noise=NoiseSource.fast(1), device="meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
@pytest.mark.parametrize("noise_mode", [NoiseMode.SECURE, NoiseMode.FAST])
def test_training_on_cuda_is_chosen_automatically(mode: str, noise_mode: NoiseMode) -> None:
    x, y = _rows(64)
    x[0] = 3e38
    ds = Dataset.from_arrays(x, y, sha256="0" * 64, feature_range=WIDE)
    cfg = TrainingConfig(
        epochs=2,
        batch_size=16,
        noise_multiplier=1.0,
        seed=1,
        noise=noise_mode,
        grad_sample_mode=mode,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(ds, LOGREG, cfg)
    assert result.record.device == "cuda"
    assert _finite(result.model)
    # the noise of a CUDA job is drawn by a CUDA generator
    assert NoiseSource.secure(device="cuda").noise.device.type == "cuda"
