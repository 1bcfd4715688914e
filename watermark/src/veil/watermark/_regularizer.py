"""The embedding regulariser (torch): a function of one layer's weights only.

Because it reads no training data, adding it to a differentially private training run does not
change the privacy accounting. With Opacus, whose per-sample clipping only sees data-dependent
gradients, add ``strength * regularizer(weight)`` after the private gradient has been formed:
it is post-processing of released quantities. :meth:`WatermarkRegularizer.training_hook` gives
the callable that ``veil.privacy.train(..., weight_hook=...)`` runs at exactly that point.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod

import torch

from veil.sdk.errors import WatermarkError
from veil.watermark._invariants import kernel_monomials
from veil.watermark._plan import WatermarkPlan

__all__ = ["WatermarkRegularizer"]

# Sinkhorn rounds while training (the verifier iterates to convergence; the weights of a
# trained layer's balanced kernels move little after a few dozen rounds).
_TRAIN_SINKHORN_ROUNDS = 40


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
        self._monomials: list[tuple[torch.Tensor, torch.Tensor]] = []
        if plan.reduce == "kernel_bag":
            taps = prod(plan.layer.weight_shape[2:])
            self._monomials = [
                (torch.from_numpy(index), torch.from_numpy(means))
                for index, means in kernel_monomials(taps)
            ]

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
        elif self.reduce == "kernel_bag":
            vector = self._kernel_bag(weight)
        else:
            vector = weight.mean(0).reshape(-1)
        vector = vector.to(self.projection.dtype)
        z: torch.Tensor = (self.projection @ vector) / vector.norm().clamp_min(1e-12)
        return z

    def _kernel_bag(self, weight: torch.Tensor) -> torch.Tensor:
        """Torch twin of :func:`veil.watermark._invariants.kernel_bag`: a fixed number of
        Sinkhorn rounds (not differentiated through) and the moments as matrix products."""
        out, inp = weight.shape[:2]
        kernels = weight.reshape(out * inp, -1).to(torch.float64)
        norms = kernels.norm(dim=1)
        with torch.no_grad():
            balance = norms.reshape(out, inp) + 1e-12 * norms.max().clamp_min(1e-300)
            for _ in range(_TRAIN_SINKHORN_ROUNDS):
                balance = balance / balance.sum(dim=1, keepdim=True) / out
                balance = balance / balance.sum(dim=0, keepdim=True) / inp
            balance = (balance / balance.sum()).reshape(-1, 1)
        unit = kernels / norms.clamp_min(1e-300).unsqueeze(1)
        taps = unit.shape[1]
        pairs = (unit.unsqueeze(2) * unit.unsqueeze(1)).reshape(len(unit), taps * taps)
        second = (balance * unit).T @ unit  # (taps, taps)
        parts = []
        for (index, means), degree in zip(self._monomials, (2, 4), strict=False):
            if degree == 2:
                values = second[index[:, 0], index[:, 1]]
            else:
                fourth = (balance * pairs).T @ pairs  # (taps^2, taps^2)
                rows = index[:, 0] * taps + index[:, 1]
                cols = index[:, 2] * taps + index[:, 3]
                values = fourth[rows, cols]
            parts.append(values - means)
        return torch.cat(parts)

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
