"""Pure privacy accounting for the Poisson-subsampled Gaussian mechanism (DP-SGD).

State lives elsewhere (the budget ledger, Opacus' accountant during a run); these functions map a
schedule (noise multiplier, sample rate, steps, delta) to epsilon and back.

PRV (Gopi et al.) is the default. Opacus' ``PRVAccountant.get_epsilon`` takes an *absolute*
``eps_error`` (0.01 by default), which is a 6% over-estimate at epsilon 0.17. We ask for a
*relative* error instead: a first pass at the default error gives epsilon0, a second pass uses
``eps_error = 0.003 * epsilon0`` and returns PRV's certified upper bound. That keeps the reported
value within ~0.3% above Google's PLD accountant (tests check within 1%, and never below).
RDP is offered as a looser, faster upper bound (with an extended order grid).
"""

from __future__ import annotations

import enum
import functools
import math
import warnings

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant

from veil.sdk.errors import ConfigError

__all__ = ["AccountantKind", "compute_epsilon", "find_noise_multiplier"]

_REL_EPS_ERROR = 0.003
_MIN_EPS_ERROR = 1e-5
_RDP_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 20.0 for x in range(1, 200)] + list(range(11, 128)) + [128.0, 192.0, 256.0, 512.0]
)


class AccountantKind(enum.Enum):
    """Which analysis turns a DP-SGD schedule into (epsilon, delta)."""

    PRV = "prv"
    RDP = "rdp"


def _kind(accountant: AccountantKind | str) -> AccountantKind:
    try:
        return AccountantKind(accountant)
    except ValueError as exc:
        raise ConfigError(f"accountant {accountant!r} unknown; use 'prv' or 'rdp'") from exc


def _check(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(f"noise_multiplier {noise_multiplier} must be a positive number")
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample_rate {sample_rate} must be in (0, 1]")
    if steps < 0:
        raise ConfigError(f"steps {steps} must be non-negative")
    if not 0 < delta < 1:
        raise ConfigError(f"delta {delta} must be in (0, 1)")


def compute_epsilon(
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: AccountantKind | str = AccountantKind.PRV,
    precise: bool = True,
) -> float:
    """Epsilon spent by ``steps`` Poisson-sampled Gaussian steps, at ``delta`` (an upper bound).

    ``precise=False`` skips PRV's second, tighter pass (still an upper bound; for progress).
    """
    kind = _kind(accountant)
    _check(noise_multiplier, sample_rate, steps, delta)
    if steps == 0:
        return 0.0
    return _epsilon_cached(
        float(noise_multiplier), float(sample_rate), int(steps), float(delta), kind, precise
    )


@functools.lru_cache(maxsize=4096)
def _epsilon_cached(
    sigma: float, q: float, steps: int, delta: float, kind: AccountantKind, precise: bool
) -> float:
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        # Opacus warns when the best RDP order is the largest one it tried, and PRV takes
        # log(1 - q) = -inf at q = 1 (correctly handled); both are harmless here.
        warnings.simplefilter("ignore", UserWarning)
        if kind is AccountantKind.RDP:
            rdp = RDPAccountant()
            rdp.history = [(sigma, q, steps)]
            return float(rdp.get_epsilon(delta, alphas=list(_RDP_ORDERS)))
        prv = PRVAccountant()
        prv.history = [(sigma, q, steps)]
        first = float(prv.get_epsilon(delta))
        eps_error = max(_REL_EPS_ERROR * first, _MIN_EPS_ERROR)
        if not precise or eps_error >= 0.01:
            return first
        return float(prv.get_epsilon(delta, eps_error=eps_error))


def find_noise_multiplier(
    *,
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: AccountantKind | str = AccountantKind.PRV,
    tolerance: float = 0.01,
    max_noise_multiplier: float = 1e3,
) -> float:
    """Smallest noise multiplier (within ``tolerance``, relative) whose epsilon <= target.

    The returned value always satisfies ``compute_epsilon(...) <= target_epsilon``.
    """
    kind = _kind(accountant)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target_epsilon {target_epsilon} must be a positive number")
    _check(1.0, sample_rate, steps, delta)
    if steps == 0:
        raise ConfigError("a job of zero steps needs no noise; give it at least one step")

    def eps(sigma: float) -> float:
        # The search runs on PRV's default (coarser, still upper-bounding) error; the result is
        # then checked with the precise bound that compute_epsilon reports.
        return _epsilon_cached(sigma, float(sample_rate), int(steps), float(delta), kind, False)

    low, high = 0.0, 1.0
    while eps(high) > target_epsilon:
        low, high = high, high * 2
        if high > max_noise_multiplier:
            raise ConfigError(
                f"no noise multiplier reaches epsilon {target_epsilon} at delta {delta} "
                f"with {steps} steps at sample rate {sample_rate:g}"
            )
    while high - low > tolerance * high:
        mid = (low + high) / 2
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    while (
        compute_epsilon(
            noise_multiplier=high,
            sample_rate=sample_rate,
            steps=steps,
            delta=delta,
            accountant=kind,
        )
        > target_epsilon
    ):
        high *= 1 + tolerance
    return high
