"""Book-keeping ghost clipping for stacks of ``nn.Linear`` and parameter-free layers.

For a linear layer on a (batch, features) input, sample i's weight gradient is the outer product
``g_i a_i^T`` of its output gradient and its input, so its squared norm is
``|g_i|^2 (|a_i|^2 + 1)`` (the ``+ 1`` is the bias). One backward pass to the layer *outputs*
gives every ``g``; the per-sample norms, the clipping factors ``c_i = min(1, C / (|grad_i| +
1e-6))`` (Opacus' flat clipping) and the clipped gradient sum ``(c * G)^T A`` then cost one
matmul per layer. Opacus' ghost clipping computes the same sum with a second backward pass; this
"book-keeping" variant (Bu et al., 2023) skips it. The clipped sum is handed to Opacus'
``DPOptimizerFastGradientClipping``, which adds the noise, scales and steps the accountant.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sdk._errors import ConfigError

__all__ = ["BookKeepingClipper", "supports_bookkeeping"]

_PARAMETER_FREE = (nn.Flatten, nn.ReLU, nn.Tanh, nn.GELU, nn.ELU, nn.SiLU, nn.Identity)


def supports_bookkeeping(module: nn.Module) -> bool:
    """True for an ``nn.Sequential`` of ``nn.Linear`` (with bias) and parameter-free layers
    whose first layer flattens its input (so every linear layer sees (batch, features))."""
    if not isinstance(module, nn.Sequential) or not len(module):
        return False
    if not isinstance(module[0], nn.Flatten):
        return False
    for layer in module:
        if isinstance(layer, nn.Linear):
            if layer.bias is None:
                return False
        elif not isinstance(layer, _PARAMETER_FREE):
            return False
    return True


class BookKeepingClipper:
    """Computes the clipped per-sample gradient sum of a cross-entropy loss into ``p.grad``."""

    def __init__(self, module: nn.Module, max_grad_norm: float) -> None:
        if not isinstance(module, nn.Sequential) or not supports_bookkeeping(module):
            raise ConfigError("book-keeping clipping needs Linear and parameter-free layers only")
        self._module = module
        self._linears = [m for m in module if isinstance(m, nn.Linear)]
        self._max_grad_norm = max_grad_norm

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Set each parameter's ``grad`` to the sum over the batch of clipped per-sample
        gradients and return the mean loss (detached; NaN for an empty batch)."""
        inputs: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []
        h = x
        for layer in self._module:
            if isinstance(layer, nn.Linear):
                inputs.append(h.detach())
                h = layer(h)
                outputs.append(h)
            else:
                h = layer(h)
        losses = F.cross_entropy(h, y, reduction="none")
        grads = torch.autograd.grad(losses.sum(), outputs)
        sq_norms = torch.zeros(x.shape[0], dtype=h.dtype)
        for a, g in zip(inputs, grads, strict=True):
            sq_norms += g.square().sum(dim=1) * (a.square().sum(dim=1) + 1.0)
        factor = (self._max_grad_norm / (sq_norms.sqrt() + 1e-6)).clamp(max=1.0)
        for layer, a, g in zip(self._linears, inputs, grads, strict=True):
            scaled = g * factor[:, None]
            layer.weight.grad = scaled.T @ a
            assert layer.bias is not None
            layer.bias.grad = scaled.sum(dim=0)
        return losses.detach().mean()
