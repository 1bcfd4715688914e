"""Opacus' fast-gradient-clipping optimizer with fused noise and no per-step gradient copies.

``BookKeepingClipper`` leaves the clipped per-sample gradient sum in ``p.grad``. Opacus'
``DPOptimizerFastGradientClipping`` would then deep-copy every gradient into ``p.summed_grad``,
draw the noise one parameter tensor at a time (in secure mode: one discarded draw and four
Gaussian tensors per parameter) and scale each gradient separately. This subclass does the same
arithmetic with less per-step work:

* ``summed_grad`` *is* ``p.grad`` (the clipper allocates a fresh tensor every step, so nothing
  else holds it); accumulation over skipped steps still adds in place;
* in secure mode the noise of *all* parameters comes from a ``NoiseStream`` as one flat tensor:
  after one discarded draw, the sum of four independent ``N(0, std^2)`` draws divided by two
  (Opacus' floating-point-attack-resistant noise, Holohan & Braghin 2021), each step's draw
  preceded by a reseed from the kernel CSPRNG. With ``prefetch`` the stream draws step t+1's
  noise on a worker thread while step t computes (the noise does not depend on the data);
* the noise is added and the result divided by the expected batch size with ``torch._foreach``
  ops over all parameters at once.

The noise standard deviation (``noise_multiplier * max_grad_norm``), the scaling, the step hook
(accountant) and the skip logic are Opacus'. In fast (seeded) mode the noise is Opacus' own
per-parameter draw, so a seeded run reproduces an Opacus run with the same seed exactly.
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping

from ._noise import NoiseSource

__all__ = ["FusedNoiseOptimizer", "NoiseStream", "secure_flat_noise"]


def secure_flat_noise(std: float, numel: int, generator: torch.Generator | None) -> torch.Tensor:
    """``numel`` Gaussian values of standard deviation ``std``, each the sum of four independent
    draws divided by two, after one discarded draw (Opacus' ``secure_mode`` noise, fused)."""
    torch.normal(mean=0.0, std=std, size=(1, 1), generator=generator)  # discarded, as Opacus
    draws = torch.normal(mean=0.0, std=std, size=(4, numel), generator=generator)
    return draws.sum(dim=0).div_(2.0)


class NoiseStream:
    """Successive steps' flat secure noise from ``source``'s noise generator.

    Every draw is ``source.before_noise()`` (a reseed from the kernel CSPRNG) followed by
    :func:`secure_flat_noise`. With ``prefetch`` the next draw runs on one worker thread as soon
    as the previous one is taken, so it overlaps the next step's gradient computation; the
    worker is then the generator's only user. ``steps``, when known, stops prefetching after
    that many draws (later ones are drawn on demand). Each draw is multiplied by ``scale`` (on
    the worker). Call :meth:`close` when training ends.
    """

    def __init__(
        self,
        source: NoiseSource,
        std: float,
        shapes: list[torch.Size],
        *,
        prefetch: bool,
        steps: int | None = None,
        scale: float = 1.0,
    ) -> None:
        if not source.is_secure:
            raise ValueError("NoiseStream draws secure noise; fast mode uses Opacus' own draw")
        self._source, self._std, self._shapes, self._scale = source, std, shapes, scale
        self._sizes = [math.prod(shape) for shape in shapes]
        self._pool = ThreadPoolExecutor(1, "veil-dp-noise") if prefetch else None
        self._next: Future[list[torch.Tensor]] | None = None
        self._left = steps  # draws still to prefetch (None: unbounded)
        self._prefetch()

    def _prefetch(self) -> None:
        if self._pool is None or self._left == 0:
            self._next = None
            return
        if self._left is not None:
            self._left -= 1
        self._next = self._pool.submit(self._draw)

    def _draw(self) -> list[torch.Tensor]:
        self._source.before_noise()
        flat = secure_flat_noise(self._std, sum(self._sizes), self._source.noise)
        if self._scale != 1.0:
            flat.mul_(self._scale)
        return [
            n.view(shape)
            for n, shape in zip(torch.split(flat, self._sizes), self._shapes, strict=True)
        ]

    def next(self) -> list[torch.Tensor]:
        """The noise of one optimizer step, one tensor per shape (never handed out twice)."""
        if self._next is None:
            return self._draw()
        noise = self._next.result()
        self._prefetch()
        return noise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._next = None


class FusedNoiseOptimizer(DPOptimizerFastGradientClipping):  # type: ignore[misc]
    """``DPOptimizerFastGradientClipping`` for gradients that already hold the clipped sum.

    Secure mode needs :meth:`use_noise_stream` before the first step; fast mode uses Opacus'
    seeded per-parameter draw from ``generator``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stream: NoiseStream | None = None
        self._prescaled = False  # add_noise already divided by the expected batch size

    @property
    def params(self) -> list[Any]:  # Parameters carrying Opacus' ``summed_grad``
        """Opacus' parameter list, built once (the parameter groups are fixed for a run)."""
        return self._params

    @functools.cached_property
    def _params(self) -> list[Any]:
        return list(DPOptimizerFastGradientClipping.params.fget(self))

    def use_noise_stream(
        self, source: NoiseSource, *, prefetch: bool, steps: int | None = None
    ) -> NoiseStream:
        """Draw secure noise from ``source`` for (at most ``steps``) optimizer steps; the caller
        closes the returned stream."""
        multiplier = getattr(self, "_adjusted_noise_multiplier", self.noise_multiplier)
        std = float(cast(float, multiplier)) * float(self.max_grad_norm)
        self.secure_mode = True
        shapes = [p.shape for p in self._params]
        # With mean loss reduction the stream draws noise already divided by the expected batch
        # size, so that add_noise can add the scaled clipped sum to it in one operation.
        scale = 1.0 / self.expected_batch_size if self.loss_reduction == "mean" else 1.0
        self._stream = NoiseStream(source, std, shapes, prefetch=prefetch, steps=steps, scale=scale)
        return self._stream

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Opacus' ``zero_grad`` (``summed_grad`` kept after a skipped step), in one loop."""
        if not set_to_none:
            super().zero_grad(set_to_none)
            return
        keep_summed = self._is_last_step_skipped
        for p in self._params:
            p.grad = None
            if not keep_summed:
                p.summed_grad = None

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
        if self._stream is None:
            raise RuntimeError("secure mode needs use_noise_stream() before the first step")
        params = self._params
        summed: list[torch.Tensor] = [p.summed_grad for p in params]
        grads = summed
        if self.noise_multiplier * self.max_grad_norm > 0:
            noise = self._stream.next()
            if self.loss_reduction == "mean":
                # (sum + noise) / B as noise / B (drawn so) + sum / B, in one operation.
                iterations = self.accumulated_iterations  # 1 for fast gradient clipping
                if iterations != 1:
                    torch._foreach_div_(noise, iterations)
                divisor = self.expected_batch_size * iterations
                torch._foreach_add_(noise, summed, alpha=1.0 / divisor)
                grads, self._prescaled = noise, True
            else:
                torch._foreach_add_(summed, noise)  # summed_grad is not read again
        for p, g in zip(params, grads, strict=True):
            p.grad = g

    def scale_grad(self) -> None:
        if self._prescaled:
            self._prescaled = False
            return
        if self.loss_reduction == "mean":
            grads = [p.grad for p in self._params]
            torch._foreach_div_(grads, self.expected_batch_size * self.accumulated_iterations)
