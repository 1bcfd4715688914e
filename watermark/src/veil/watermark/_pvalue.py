"""Exact binomial tail probabilities, in integer arithmetic (no scipy on the verify path)."""

from __future__ import annotations

import math
from fractions import Fraction

from veil.sdk.errors import WatermarkError

__all__ = ["binomial_tail"]


def binomial_tail(matches: int, trials: int, chance: Fraction) -> float:
    """P[X >= matches] for X ~ Binomial(trials, chance), computed exactly then rounded once.

    ``chance`` is a rational (1/2 for watermark bits, 1/num_classes for a trigger set); the tail is
    summed as an exact fraction, so the result is the correctly rounded float of the true value.
    """
    if trials < 0 or not 0 <= matches <= trials:
        raise WatermarkError(f"binomial tail needs 0 <= matches <= trials, got {matches}/{trials}")
    if not 0 < chance < 1:
        raise WatermarkError(f"binomial chance {chance} is not in (0, 1)")
    a, b = chance.numerator, chance.denominator
    numerator = sum(
        math.comb(trials, j) * a**j * (b - a) ** (trials - j) for j in range(matches, trials + 1)
    )
    return float(Fraction(numerator, b**trials))
