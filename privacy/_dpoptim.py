"""Opacus' fast-gradient-clipping optimizer with fused noise and no per-step gradient copies.

``BookKeepingClipper`` leaves the clipped per-sample gradient sum in ``p.grad``. Opacus'
``DPOptimizerFastGradientClipping`` would then deep-copy every gradient into ``p.summed_grad``,
draw the noise one parameter tensor at a time (in secure mode: one discarded draw and four
Gaussian tensors per parameter) and scale each gradient separately. This subclass does the same
arithmetic with less per-step work:

* ``summed_grad`` *is* ``p.grad`` (the clipper allocates a fresh tensor every step, so nothing
  else holds it); accumulation over skipped steps still adds in place;
* in secure mode, one discarded draw, then the noise of *all* parameters as one flat tensor: the
  sum of four independent ``N(0, std^2)`` draws divided by two (Opacus' floating-point-attack
  resistant noise, Holohan & Braghin 2021), drawn in one call;
* the noise is added and the result divided by the expected batch size with ``torch._foreach``
  ops over all parameters at once.

The noise standard deviation (``noise_multiplier * max_grad_norm``), the scaling, the step hook
(accountant) and the skip logic are Opacus'. In fast (seeded) mode the noise is Opacus' own
per-parameter draw, so a seeded run reproduces an Opacus run with the same seed exactly.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping

__all__ = ["FusedNoiseOptimizer", "secure_flat_noise"]


def secure_flat_noise(std: float, numel: int, generator: torch.Generator | None) -> torch.Tensor:
    """``numel`` Gaussian values of standard deviation ``std``, each the sum of four independent
    draws divided by two, after one discarded draw (Opacus' ``secure_mode`` noise, fused)."""
    torch.normal(mean=0.0, std=std, size=(1, 1), generator=generator)  # discarded, as Opacus
    draws = torch.normal(mean=0.0, std=std, size=(4, numel), generator=generator)
    return draws.sum(dim=0).div_(2.0)


class FusedNoiseOptimizer(DPOptimizerFastGradientClipping):  # type: ignore[misc]
    """``DPOptimizerFastGradientClipping`` for gradients that already hold the clipped sum."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sizes: list[int] | None = None

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad)
            else:
                p.summed_grad = p.grad

    def add_noise(self) -> None:
        if not self.secure_mode:
            super().add_noise()
            return
        params: list[torch.Tensor] = list(self.params)
        multiplier = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
        std = float(cast(float, multiplier)) * float(self.max_grad_norm)
        summed: list[torch.Tensor] = [p.summed_grad for p in params]  # type: ignore[attr-defined]
        if self._sizes is None:
            self._sizes = [int(p.numel()) for p in params]
        if std > 0:
            flat = secure_flat_noise(std, sum(self._sizes), self.generator)
            noise = [
                n.view_as(s) for n, s in zip(torch.split(flat, self._sizes), summed, strict=True)
            ]
            torch._foreach_add_(summed, noise)  # in place: summed_grad is not read again
        for p, s in zip(params, summed, strict=True):
            p.grad = s

    def scale_grad(self) -> None:
        if self.loss_reduction == "mean":
            grads = [p.grad for p in self.params]
            torch._foreach_div_(grads, self.expected_batch_size * self.accumulated_iterations)
