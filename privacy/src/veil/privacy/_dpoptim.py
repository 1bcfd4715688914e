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
* with mean loss reduction the stream draws the noise already divided by the expected batch
  size, so adding it and scaling the clipped sum is one ``torch._foreach_add_`` over all
  parameters (otherwise the noise is added and the sum scaled with ``torch._foreach`` ops).

The noise standard deviation (``noise_multiplier * max_grad_norm``), the scaling, the step hook
(accountant) and the skip logic are Opacus'. In fast (seeded) mode the noise is Opacus' own
per-parameter draw, so a seeded run reproduces an Opacus run with the same seed exactly.
"""

from __future__ import annotations

import functools
import math
import queue
import threading
from typing import Any, cast

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping

from ._noise import NoiseSource

__all__ = ["FusedNoiseOptimizer", "NoiseStream", "secure_flat_noise"]


def secure_flat_noise(
    std: float,
    numel: int,
    generator: torch.Generator | None,
    *,
    out: torch.Tensor | None = None,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """``numel`` Gaussian values of standard deviation ``std``, each the sum of four independent
    draws divided by two, after one discarded draw (Opacus' ``secure_mode`` noise, fused).

    ``out`` (``numel`` values) and ``scratch`` (4 x ``numel``) let a caller reuse memory.
    """
    device = generator.device if generator is not None else None
    # discarded, as Opacus
    torch.normal(mean=0.0, std=std, size=(1, 1), generator=generator, device=device)
    if scratch is None:
        scratch = torch.empty(4, numel, device=device)
    draws = torch.normal(mean=0.0, std=std, size=(4, numel), generator=generator, out=scratch)
    return torch.sum(draws, dim=0, out=out).div_(2.0)


_STOP = object()


class NoiseStream:
    """Successive steps' secure noise from ``source``'s noise generator, one tensor per shape.

    Every draw is ``source.before_noise()`` (a reseed from the kernel CSPRNG) followed by
    :func:`secure_flat_noise`, multiplied by ``scale``. With ``prefetch`` the next draw runs on
    a worker thread as soon as the previous one is taken, so it overlaps the next step's
    gradient computation; the worker is then the generator's only user. ``steps``, when known,
    stops prefetching after that many draws (later ones are drawn on demand). Call
    :meth:`close` when training ends.

    Draws reuse three buffers in turn: the tensors :meth:`next` returns stay valid until it has
    been called twice more (an optimizer step uses them and lets go within one step).
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
        self._source, self._std, self._scale = source, std, scale
        sizes = [math.prod(shape) for shape in shapes]
        numel = sum(sizes)
        device = source.device  # noise is drawn where it is added
        self._scratch = torch.empty(4, numel, device=device)
        self._buffers: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
        for _ in range(3):
            flat = torch.empty(numel, device=device)
            views = [
                v.view(shape) for v, shape in zip(torch.split(flat, sizes), shapes, strict=True)
            ]
            self._buffers.append((flat, views))
        self._turn = 0
        self._left = steps  # draws still to prefetch (None: unbounded)
        self._pending = 0  # draws requested from the worker and not yet taken
        self._worker: threading.Thread | None = None
        if prefetch:
            # C-level queues: handing a draw over takes the GIL only briefly.
            self._requests: queue.SimpleQueue[object] = queue.SimpleQueue()
            self._results: queue.SimpleQueue[list[torch.Tensor] | BaseException]
            self._results = queue.SimpleQueue()
            self._worker = threading.Thread(target=self._serve, name="veil-dp-noise", daemon=True)
            self._worker.start()
            self._request()

    def _draw(self) -> list[torch.Tensor]:
        flat, views = self._buffers[self._turn]
        self._turn = (self._turn + 1) % len(self._buffers)
        self._source.before_noise()
        secure_flat_noise(
            self._std, flat.numel(), self._source.noise, out=flat, scratch=self._scratch
        )
        if self._scale != 1.0:
            flat.mul_(self._scale)
        return views

    def _serve(self) -> None:
        while self._requests.get() is not _STOP:
            try:
                self._results.put(self._draw())
            except BaseException as exc:  # handed to the consumer, raised there
                self._results.put(exc)

    def _request(self) -> None:
        if self._worker is None or self._left == 0:
            return
        if self._left is not None:
            self._left -= 1
        self._pending += 1
        self._requests.put(True)

    def next(self) -> list[torch.Tensor]:
        """The noise of one optimizer step, one tensor per shape."""
        if not self._pending:
            return self._draw()
        result = self._results.get()
        self._pending -= 1
        if isinstance(result, BaseException):
            raise result
        self._request()
        return result

    def close(self) -> None:
        """Stop the worker (after the draw it may be making)."""
        if self._worker is not None:
            self._requests.put(_STOP)
            self._worker.join()
            self._worker = None
            self._pending = 0


class FusedNoiseOptimizer(DPOptimizerFastGradientClipping):  # type: ignore[misc]
    """``DPOptimizerFastGradientClipping`` for gradients that already hold the clipped sum.

    Secure mode needs :meth:`use_noise_stream` before the first step; fast mode uses Opacus'
    seeded per-parameter draw from ``generator``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stream: NoiseStream | None = None
        self._noise_std = 0.0  # of the stream's draws, before its scaling
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
        self._noise_std = std
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
        for p in self._params:
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
        if self._noise_std > 0:
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
