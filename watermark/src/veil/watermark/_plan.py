"""A watermark plan: everything the embedder needs, before there is a claim (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from math import prod

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.sdk.errors import WatermarkError
from veil.watermark._claim import EmbeddingReport, ProjectionParams, WatermarkClaim
from veil.watermark._invariants import kernel_bag_dim
from veil.watermark._keys import WatermarkKey, derive_projection, message_bits
from veil.watermark._locate import LayerLocator
from veil.watermark._trigger import TriggerParams

__all__ = ["DEFAULT_BITS", "DEFAULT_MARGIN", "WatermarkPlan"]

DEFAULT_BITS = 128
DEFAULT_MARGIN = 1.5


@dataclass(frozen=True)
class WatermarkPlan:
    """Key, owner, target layer and projection for one embedding.

    The projected vector is ``z = X @ v / |v|`` with ``v`` the reduced weight; under the null
    (an unmarked model) each ``z_i`` is N(0, 1), so ``margin`` is in units of that spread.
    """

    key: WatermarkKey
    owner_public_key: bytes
    layer: LayerLocator
    n_bits: int = DEFAULT_BITS
    reduce: str = "centered"
    margin: float = DEFAULT_MARGIN
    second: str | None = None
    """The reduction of a second mark in the same layer (see :meth:`second_plan`), or none."""
    mark: int = 0
    """Which mark of the claim this plan embeds: 0 the first, 1 the second."""

    def __post_init__(self) -> None:
        if self.margin <= 0:
            raise WatermarkError(f"margin {self.margin} must be positive")
        if self.second is not None and (self.second == self.reduce or self.mark):
            raise WatermarkError(f"a second mark with {self.second!r} after {self.reduce!r}")
        message_bits(self.owner_public_key, self.n_bits)  # validates bit count and key length
        if self.reduce == "channel_mean" and self.layer.kind != "conv":
            raise WatermarkError("channel_mean reduction applies to conv layers only")
        if self.reduce == "kernel_bag" and self.layer.kind != "conv":
            raise WatermarkError("kernel_bag reduction applies to conv layers only")
        if self.reduce in ("unit_gram", "kernel_bag") and self.projection_params.dim < self.n_bits:
            raise WatermarkError(
                f"{self.reduce} on {self.layer.describe()} gives {self.projection_params.dim} "
                f"values, fewer than {self.n_bits} bits"
            )

    @property
    def projection_params(self) -> ProjectionParams:
        shape = self.layer.weight_shape
        if self.reduce == "unit_gram":
            fan_in = prod(shape[1:])
            dim = fan_in * (fan_in - 1) // 2
        elif self.reduce == "kernel_bag":
            dim = max(1, kernel_bag_dim(shape))
        else:
            dim = prod(shape) if self.reduce == "centered" else prod(shape[1:])
        return ProjectionParams(reduce=self.reduce, dim=dim)

    def second_plan(self) -> WatermarkPlan | None:
        """The plan of the second mark: same key, layer, bits and margin, its own reduction
        and an independent projection; None when the claim has one mark."""
        if self.second is None:
            return None
        return replace(self, reduce=self.second, second=None, mark=1)

    def projection(self) -> npt.NDArray[np.float64]:
        return derive_projection(
            self.key.secret, self.n_bits, self.projection_params.dim, mark=self.mark
        )

    def message(self) -> npt.NDArray[np.int8]:
        return message_bits(self.owner_public_key, self.n_bits)

    def claim(
        self,
        owner_key: Ed25519PrivateKey,
        *,
        trigger: TriggerParams | None,
        now: datetime,
        embedding: EmbeddingReport | None = None,
    ) -> WatermarkClaim:
        """Sign the claim for this plan with the owner's key (which must match the plan)."""
        if self.mark:
            raise WatermarkError("sign the claim with the first mark's plan")
        second = self.second_plan()
        claim = WatermarkClaim.create(
            owner_key=owner_key,
            key=self.key,
            layer=self.layer,
            n_bits=self.n_bits,
            projection=self.projection_params,
            trigger=trigger,
            now=now,
            embedding=embedding,
            second=None if second is None else second.projection_params,
        )
        if claim.owner_public_key != self.owner_public_key:
            raise WatermarkError("signing key does not belong to the plan's owner")
        return claim
