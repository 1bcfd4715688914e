"""Post-training embedding into an existing ONNX model (uses torch).

1. Locate the target layer structurally (or pick the weight layer with most parameters).
2. Apply the minimal-norm weight change that puts every projected bit beyond the margin
   (least-norm solution of the violated linear constraints, iterated because ``|v|`` moves).
3. Fine-tune the whole model briefly on the owner's data (plus the keyed trigger set) with the
   regulariser, so accuracy recovers while the mark stays put.
4. Write the new weight values back into the ORIGINAL graph's initializers, sign the claim, and
   verify the result with the same code a third party would run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt
import onnx
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.sdk.errors import WatermarkError
from veil.watermark._claim import WatermarkClaim, public_key_bytes
from veil.watermark._keys import WatermarkKey
from veil.watermark._locate import LayerLocator, LocatedLayer, locate, weight_layers
from veil.watermark._onnx_torch import OnnxModule, write_back
from veil.watermark._plan import DEFAULT_BITS, DEFAULT_MARGIN, WatermarkPlan
from veil.watermark._regularizer import WatermarkRegularizer
from veil.watermark._trigger import TriggerParams, derive_trigger_set
from veil.watermark._verify import (
    TriggerVerdict,
    WatermarkVerdict,
    load_model,
    onnx_predictor,
    verify,
    verify_trigger,
)

__all__ = ["EmbedResult", "choose_layer", "embed_onnx", "min_norm_shift"]


@dataclass(frozen=True)
class EmbedResult:
    """The marked model, its signed claim, and what the embedder measured on the owner's data."""

    model: bytes
    claim: WatermarkClaim
    verdict: WatermarkVerdict
    trigger_verdict: TriggerVerdict | None
    accuracy_before: float
    accuracy_after: float


def choose_layer(model: onnx.ModelProto) -> LayerLocator:
    """The float conv/dense layer with the most weights, as a structural locator."""
    layers = [layer for layer in weight_layers(model) if layer.initializer is not None]
    if not layers:
        raise WatermarkError("model has no float conv or dense layer to mark")
    best = max(layers, key=lambda layer: layer.weight.size)
    same = [
        layer
        for layer in layers
        if layer.kind == best.kind and layer.weight.shape == best.weight.shape
    ]
    return LayerLocator(
        kind=best.kind,
        weight_shape=tuple(int(d) for d in best.weight.shape),
        occurrence=same.index(best),
    )


def min_norm_shift(
    weight: npt.NDArray[np.float64],
    projection: npt.NDArray[np.float64],
    message: npt.NDArray[np.int8],
    margin: float,
    *,
    center: bool = True,
    rounds: int = 6,
) -> npt.NDArray[np.float64]:
    """The smallest change to ``weight`` after which ``b_i * (X C w)_i / |C w| >= margin``.

    ``C`` subtracts the mean over output units (axis 0), so ``X C`` is ``X`` with each row
    centred the same way; the least-norm change lies in the range of ``C``. Each round solves
    the least-norm problem for the currently violated rows; a few rounds absorb the change of
    ``|C w|``. With ``center=False``, ``C`` is the identity. Returns the new weight, same shape.
    """
    shape = weight.shape

    def centre(a: npt.NDArray[np.float64], axis: int) -> npt.NDArray[np.float64]:
        result: npt.NDArray[np.float64] = a - a.mean(axis=axis, keepdims=True) if center else a
        return result

    projection = centre(projection.reshape(-1, *shape), 1).reshape(len(projection), -1)
    v = weight.astype(np.float64).reshape(-1).copy()
    signs = message.astype(np.float64)
    for _ in range(rounds):
        centered = centre(v.reshape(shape), 0).reshape(-1)
        norm = float(np.linalg.norm(centered)) or 1.0
        z = projection @ v / norm
        violated = signs * z < margin
        if not violated.any():
            break
        rows = projection[violated]
        target = signs[violated] * margin * 1.02 * norm - rows @ v
        gram = rows @ rows.T
        v = v + rows.T @ np.linalg.solve(gram, target)
    return v.reshape(shape)


def _accuracy(module: OnnxModule, x: torch.Tensor, y: torch.Tensor) -> float:
    module.eval()
    with torch.no_grad():
        return float((module(x).argmax(dim=1) == y).float().mean().item())


def _canonical(param: torch.Tensor, layer: LocatedLayer) -> torch.Tensor:
    return param.t() if layer.transposed else param


def embed_onnx(
    model: bytes,
    *,
    owner_key: Ed25519PrivateKey,
    key: WatermarkKey,
    x: npt.NDArray[np.floating],
    y: npt.NDArray[np.integer],
    now: datetime,
    layer: LayerLocator | None = None,
    n_bits: int = DEFAULT_BITS,
    reduce: str = "centered",
    margin: float = DEFAULT_MARGIN,
    epochs: int = 30,
    lr: float = 3e-3,
    batch_size: int = 64,
    strength: float = 1.0,
    trigger_count: int = 32,
    trigger_weight: float = 0.1,
    seed: int = 0,
) -> EmbedResult:
    """Embed the owner's mark in ``model`` (ONNX bytes) using the owner's data ``x``, ``y``.

    Returns the marked ONNX bytes (same graph, new initializer values) and the signed claim.
    Raises :class:`WatermarkError` if the graph cannot be handled or the mark does not verify.
    """
    proto = load_model(model)
    target = layer if layer is not None else choose_layer(proto)
    located = locate(proto, target)
    if located.initializer is None:
        raise WatermarkError(
            "the target layer's weight is not a float initializer (quantised?); "
            "embed into the float model before quantising"
        )
    if len(x) != len(y) or len(x) == 0:
        raise WatermarkError(f"owner data has {len(x)} inputs and {len(y)} labels")
    plan = WatermarkPlan(
        key=key,
        owner_public_key=public_key_bytes(owner_key.public_key()),
        layer=target,
        n_bits=n_bits,
        reduce=reduce,
        margin=margin,
    )
    generator = torch.Generator().manual_seed(seed)
    module = OnnxModule(proto)
    data_x = torch.from_numpy(np.asarray(x, dtype=np.float32))
    data_y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    try:
        num_classes = int(module(data_x[:2]).shape[1])
    except (RuntimeError, IndexError) as exc:
        raise WatermarkError(f"owner data does not fit the model's input: {exc}") from exc
    if int(data_y.max()) >= num_classes or int(data_y.min()) < 0:
        raise WatermarkError(f"owner labels fall outside the model's {num_classes} classes")
    accuracy_before = _accuracy(module, data_x, data_y)

    param = module.parameter_for(located.initializer)
    reg = WatermarkRegularizer(plan)
    with torch.no_grad():
        weight = _canonical(param, located).double()
        if reduce == "centered":
            shifted = min_norm_shift(weight.numpy(), plan.projection(), plan.message(), margin)
            new_weight = torch.from_numpy(shifted)
        else:
            # The mean over output channels moves by d when every channel moves by d.
            mean = weight.mean(0).numpy()
            shifted = min_norm_shift(mean, plan.projection(), plan.message(), margin, center=False)
            new_weight = weight + torch.from_numpy(shifted - mean)
        _canonical(param, located).copy_(new_weight.float())

    trigger_params: TriggerParams | None = None
    trig_x = trig_y = None
    if trigger_count > 0:
        low, high = float(np.min(x)), float(np.max(x))
        if not low < high:
            raise WatermarkError("owner data is constant; cannot derive a trigger range")
        triggers = derive_trigger_set(
            key.secret, trigger_count, num_classes, tuple(data_x.shape[1:]), low, high
        )
        trigger_params = TriggerParams(
            count=trigger_count,
            num_classes=num_classes,
            input_shape=tuple(int(d) for d in data_x.shape[1:]),
            low=low,
            high=high,
            commitment=triggers.commitment(),
        )
        trig_x = torch.from_numpy(triggers.inputs)
        trig_y = torch.from_numpy(triggers.labels)

    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    n = len(data_x)
    steps = max(1, epochs * ((n + batch_size - 1) // batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    for _ in range(epochs):
        module.train()
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = module.logits_loss(module(data_x[idx]), data_y[idx])
            if trig_x is not None and trig_y is not None:
                pick = torch.randint(0, len(trig_x), (min(8, len(trig_x)),), generator=generator)
                trig_loss = module.logits_loss(module(trig_x[pick]), trig_y[pick])
                loss = loss + trigger_weight * trig_loss
            loss = loss + strength * reg(_canonical(param, located))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    accuracy_after = _accuracy(module, data_x, data_y)

    marked = write_back(proto, module).SerializeToString()
    claim = plan.claim(owner_key, trigger=trigger_params, now=now)
    verdict = verify(marked, claim, key)
    if not verdict.detected:
        raise WatermarkError(
            f"embedding failed: only {verdict.matches}/{n_bits} bits survived fine-tuning "
            f"(p = {verdict.p_value:.3g}); raise strength or margin"
        )
    trigger_verdict = None
    if trigger_params is not None:
        trigger_verdict = verify_trigger(onnx_predictor(marked), claim, key)
    return EmbedResult(
        model=marked,
        claim=claim,
        verdict=verdict,
        trigger_verdict=trigger_verdict,
        accuracy_before=accuracy_before,
        accuracy_after=accuracy_after,
    )
