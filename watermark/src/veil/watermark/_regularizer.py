"""The embedding regulariser (torch): a function of one layer's weights only.

Because it reads no training data, adding it to a differentially private training run does not
change the privacy accounting. With Opacus, whose per-sample clipping only sees data-dependent
gradients, add ``strength * regularizer(weight)`` after the private gradient has been formed (for
example, call ``regularizer.add_grad_(weight, strength)`` between ``loss.backward()`` and
``optimizer.step()``): it is post-processing of public quantities.
"""

from __future__ import annotations

import torch

from veil.sdk.errors import WatermarkError
from veil.watermark._plan import WatermarkPlan

__all__ = ["WatermarkRegularizer"]


class WatermarkRegularizer(torch.nn.Module):
    """Hinge loss ``mean(relu(margin - b_i * z_i))`` with ``z = X @ v / |v|``.

    ``weight`` is given in canonical (PyTorch) layout: ``(out, in)`` for a Linear layer,
    ``(out, in/groups, kh, kw)`` for a Conv2d.
    """

    projection: torch.Tensor
    message: torch.Tensor

    def __init__(self, plan: WatermarkPlan) -> None:
        super().__init__()
        self.reduce = plan.reduce
        self.margin = float(plan.margin)
        self.weight_shape = plan.layer.weight_shape
        self.register_buffer("projection", torch.from_numpy(plan.projection()).float())
        self.register_buffer("message", torch.from_numpy(plan.message().astype("float32")))

    def projected(self, weight: torch.Tensor) -> torch.Tensor:
        """The normalised projection ``z`` (N(0, 1) per entry for an unmarked layer)."""
        if tuple(weight.shape) != self.weight_shape:
            raise WatermarkError(f"weight shape {tuple(weight.shape)} != {self.weight_shape}")
        if self.reduce == "centered":
            vector = (weight - weight.mean(0, keepdim=True)).reshape(-1)
        else:
            vector = weight.mean(0).reshape(-1)
        vector = vector.to(self.projection.dtype)
        z: torch.Tensor = (self.projection @ vector) / vector.norm().clamp_min(1e-12)
        return z

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        z = self.projected(weight)
        return torch.relu(self.margin - self.message * z).mean()

    def matches(self, weight: torch.Tensor) -> int:
        """How many bits ``weight`` currently carries."""
        with torch.no_grad():
            return int((torch.sign(self.projected(weight)) == self.message).sum().item())

    def add_grad_(self, weight: torch.Tensor, strength: float) -> None:
        """Add ``strength * d loss / d weight`` to ``weight.grad`` (for DP trainers)."""
        with torch.enable_grad():
            w = weight.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(strength * self.forward(w), w)
        if weight.grad is None:
            weight.grad = grad.detach().clone()
        else:
            weight.grad.add_(grad)
