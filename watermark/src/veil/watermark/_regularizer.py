"""The embedding regulariser (torch): a function of one layer's weights only.

Because it reads no training data, adding it to a differentially private training run does not
change the privacy accounting. With Opacus, whose per-sample clipping only sees data-dependent
gradients, add ``strength * regularizer(weight)`` after the private gradient has been formed:
it is post-processing of released quantities. :meth:`WatermarkRegularizer.training_hook` gives
the callable that ``veil.privacy.train(..., weight_hook=...)`` runs at exactly that point.
"""

from __future__ import annotations

from collections.abc import Callable

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
        self.kind = plan.layer.kind
        self.occurrence = plan.layer.occurrence
        self.register_buffer("projection", torch.from_numpy(plan.projection()).float())
        self.register_buffer("message", torch.from_numpy(plan.message().astype("float32")))

    def projected(self, weight: torch.Tensor) -> torch.Tensor:
        """The normalised projection ``z`` (N(0, 1) per entry for an unmarked layer)."""
        if tuple(weight.shape) != self.weight_shape:
            raise WatermarkError(f"weight shape {tuple(weight.shape)} != {self.weight_shape}")
        if self.reduce == "centered":
            vector = (weight - weight.mean(0, keepdim=True)).reshape(-1)
        elif self.reduce == "unit_gram":
            rows = weight.reshape(weight.shape[0], -1)
            unit = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
            upper = torch.triu_indices(rows.shape[1], rows.shape[1], offset=1, device=rows.device)
            values = (unit.T @ unit)[upper[0], upper[1]]
            vector = values - values.mean()
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

    def layer_weight(self, model: torch.nn.Module) -> torch.Tensor:
        """The weight of the plan's layer in a torch ``model``, found by structure.

        Counts ``Linear`` (dense) and ``Conv2d`` (conv) modules in registration order whose
        weight has the plan's shape, as the locator counts them in the exported graph.
        """
        seen = 0
        for sub in model.modules():
            if isinstance(sub, torch.nn.Linear):
                kind, weight = "dense", sub.weight
            elif isinstance(sub, torch.nn.Conv2d):
                kind, weight = "conv", sub.weight
            else:
                continue
            if kind != self.kind or tuple(weight.shape) != self.weight_shape:
                continue
            if seen == self.occurrence:
                return weight
            seen += 1
        raise WatermarkError(
            f"model has no {self.kind} layer #{self.occurrence} with weight shape "
            f"{self.weight_shape}"
        )

    def training_hook(self, strength: float = 1.0) -> Callable[[torch.nn.Module], None]:
        """A ``weight_hook`` for ``veil.privacy.train``: adds the mark's gradient each step.

        The hook reads the plan's layer weight (see :meth:`layer_weight`) and nothing else;
        call :meth:`layer_weight` on a freshly built model first to fail before training.
        """

        def hook(model: torch.nn.Module) -> None:
            self.add_grad_(self.layer_weight(model), strength)

        return hook

    def add_grad_(self, weight: torch.Tensor, strength: float) -> None:
        """Add ``strength * d loss / d weight`` to ``weight.grad`` (for DP trainers)."""
        with torch.enable_grad():
            w = weight.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(strength * self.forward(w), w)
        if weight.grad is None:
            weight.grad = grad.detach().clone()
        else:
            weight.grad.add_(grad)
