"""Accountants checked against Google's dp-accounting PLD accountant.

The PLD accountant (pessimistic estimate, value discretization 1e-4) is the reference for a
Poisson-sampled Gaussian mechanism. The default PRV accountant must agree within 1% and no
accountant offered may report less than PLD minus 0.5% (RDP is a looser upper bound).
"""

from __future__ import annotations

import functools

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant

from veil.privacy import AccountantKind, compute_epsilon, find_noise_multiplier
from veil.sdk.errors import ConfigError

SETTINGS = [
    # (noise multiplier, sample rate, steps, delta)
    (1.1, 0.01, 1000, 1e-5),
    (4.0, 0.02, 100, 1e-5),
    (1.0, 1 / 28, 140, 1e-6),
    (2.0, 0.004, 2000, 1e-6),
]


@functools.cache
def pld_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    acc = PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    return float(acc.get_epsilon(delta))


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), SETTINGS)
def test_prv_default_matches_pld_within_one_percent(
    sigma: float, q: float, steps: int, delta: float
) -> None:
    ref = pld_epsilon(sigma, q, steps, delta)
    eps = compute_epsilon(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    assert abs(eps - ref) <= 0.01 * ref, (eps, ref)
    assert eps >= ref * (1 - 0.005), (eps, ref)


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), SETTINGS[:2])
def test_rdp_never_reports_less_than_pld(sigma: float, q: float, steps: int, delta: float) -> None:
    ref = pld_epsilon(sigma, q, steps, delta)
    eps = compute_epsilon(
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        delta=delta,
        accountant=AccountantKind.RDP,
    )
    assert eps >= ref * (1 - 0.005), (eps, ref)
    assert eps <= ref * 1.3  # looser, but still a useful bound


def test_golden_epsilon() -> None:
    # Pinned: changes to the accountant or its error handling must show up here.
    eps = compute_epsilon(noise_multiplier=1.1, sample_rate=0.01, steps=1000, delta=1e-5)
    assert eps == pytest.approx(1.5200, abs=2e-3)


def test_more_steps_spend_more() -> None:
    eps = [
        compute_epsilon(noise_multiplier=1.0, sample_rate=0.05, steps=s, delta=1e-5)
        for s in (0, 10, 50, 100)
    ]
    assert eps[0] == 0.0
    assert eps == sorted(eps) and len(set(eps)) == 4


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_noise_multiplier_reaches_but_never_exceeds_target(target: float) -> None:
    sigma = find_noise_multiplier(target_epsilon=target, sample_rate=1 / 28, steps=84, delta=1e-6)
    eps = compute_epsilon(noise_multiplier=sigma, sample_rate=1 / 28, steps=84, delta=1e-6)
    assert eps <= target
    assert eps >= 0.95 * target  # not wastefully noisy
    assert pld_epsilon(sigma, 1 / 28, 84, 1e-6) <= target


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": 0.0, "sample_rate": 0.1, "steps": 1, "delta": 1e-5},
        {"noise_multiplier": float("nan"), "sample_rate": 0.1, "steps": 1, "delta": 1e-5},
        {"noise_multiplier": 1.0, "sample_rate": 0.0, "steps": 1, "delta": 1e-5},
        {"noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 1, "delta": 1e-5},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": -1, "delta": 1e-5},
        {"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 1, "delta": 0.0},
        {
            "noise_multiplier": 1.0,
            "sample_rate": 0.1,
            "steps": 1,
            "delta": 1e-5,
            "accountant": "gdp",
        },
    ],
)
def test_invalid_schedules_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        compute_epsilon(**kwargs)  # type: ignore[arg-type]


def test_unreachable_target_rejected() -> None:
    with pytest.raises(ConfigError, match="no noise multiplier"):
        find_noise_multiplier(
            target_epsilon=0.01, sample_rate=0.5, steps=10, delta=1e-5, max_noise_multiplier=4.0
        )
