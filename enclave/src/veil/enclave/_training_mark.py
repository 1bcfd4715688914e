"""The owner's watermark, embedded while a DP training job runs inside the enclave.

The regulariser (``veil.watermark.WatermarkRegularizer``) reads only the model's weights, so
the training job passes it to ``veil.privacy`` as a ``weight_hook``: it adds its gradient after
the private gradient is formed, which is post-processing and leaves the accounting unchanged.
Everything that can fail on the request (keys, layer, bit count) fails in :func:`prepare_mark`,
before any budget is charged. The owner's keys are used in memory only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from veil.enclave._errors import InvalidInput
from veil.sdk.errors import WatermarkError
from veil.v1 import training_pb2

if TYPE_CHECKING:
    from torch import nn

    from veil.privacy import ModelSpec

__all__ = ["DEFAULT_BITS", "DEFAULT_STRENGTH", "TrainingMark", "claim_digest", "prepare_mark"]

DEFAULT_STRENGTH = 20.0
DEFAULT_BITS = 64


@dataclass(frozen=True)
class TrainingMark:
    """A prepared mark: the hook for the trainer, and what signs and checks the result."""

    hook: Callable[[nn.Module], None]
    finish: Callable[[bytes, datetime], training_pb2.TrainedWatermark]
    owner_public_key: str
    commitment: str


def claim_digest(claim_json: str) -> str:
    """The claim's digest as ``WatermarkClaim.digest`` computes it (for the certificate)."""
    from veil.watermark import WatermarkClaim

    return WatermarkClaim.from_json(claim_json).digest()


def prepare_mark(request: training_pb2.TrainingWatermark, spec: ModelSpec) -> TrainingMark:
    """Parse the owner's keys and plan the mark on the first layer of ``spec``'s model.

    Raises :class:`InvalidInput` (one line) for a malformed key, a bit count the layer cannot
    carry, or a model without a conv or dense layer, all before training starts.
    """
    import torch
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from veil.privacy import build_model
    from veil.watermark import (
        LayerLocator,
        WatermarkKey,
        WatermarkPlan,
        WatermarkRegularizer,
        verify,
    )

    if len(request.owner_private_key) != 32:
        raise InvalidInput("watermark owner_private_key must be a 32-byte Ed25519 seed")
    owner = Ed25519PrivateKey.from_private_bytes(request.owner_private_key)
    strength = request.strength or DEFAULT_STRENGTH
    if not 0 < strength <= 1e4:
        raise InvalidInput(f"watermark strength {strength} is not in (0, 1e4]")
    model = build_model(spec)
    first = next(
        (m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)), None
    )
    if first is None:
        raise InvalidInput("the model has no conv or dense layer to mark")
    kind = "conv" if isinstance(first, torch.nn.Conv2d) else "dense"
    try:
        key = WatermarkKey.from_json(request.watermark_key_json)
        plan = WatermarkPlan(
            key=key,
            owner_public_key=owner.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
            layer=LayerLocator(kind, tuple(int(d) for d in first.weight.shape), 0),
            n_bits=request.n_bits or DEFAULT_BITS,
        )
        regulariser = WatermarkRegularizer(plan)
        regulariser.layer_weight(model)  # the layer is there: fail now, not after charging
    except WatermarkError as exc:
        raise InvalidInput(str(exc).splitlines()[0]) from exc

    def finish(onnx_model: bytes, now: datetime) -> training_pb2.TrainedWatermark:
        """Sign the claim and check the trained model with the public verifier."""
        claim = plan.claim(owner, trigger=None, now=now)
        verdict = verify(onnx_model, claim, key)
        if not verdict.detected:
            raise InvalidInput(
                f"the mark did not take during training: {verdict.matches}/{verdict.n_bits} "
                f"bits (p = {verdict.p_value:.3g}); raise the watermark strength"
            )
        return training_pb2.TrainedWatermark(
            claim_json=claim.to_json(),
            p_value=verdict.p_value,
            matches=verdict.matches,
            n_bits=verdict.n_bits,
        )

    return TrainingMark(
        hook=regulariser.training_hook(strength),
        finish=finish,
        owner_public_key=plan.owner_public_key.hex(),
        commitment=key.commitment().hex(),
    )
