"""Post-training embedding into an existing ONNX model (uses torch).

1. Locate the target layer structurally (or pick the weight layer with most parameters).
2. Apply the minimal-norm weight change that puts every projected bit beyond the margin
   (least-norm solution of the violated linear constraints, iterated because ``|v|`` moves).
3. Fine-tune the whole model briefly on the owner's data (plus the keyed trigger set) with the
   regulariser, so accuracy recovers while the mark stays put. The step size is chosen on
   held-out rows (a split of the owner's data, or rows the owner names): a full fine-tune at
   ``lr``; if at its end a bit is not in with margin, the held-out loss is above the unmarked
   model's or the accuracy dropped by more than ``max_drop`` points, another at ``lr / 3``; the
   better one that keeps the mark wins. With a split, the released model is then fine-tuned on
   all rows at that step size. The held-out counts go into the claim.
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
from veil.watermark._claim import EmbeddingReport, WatermarkClaim, public_key_bytes
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
    """Accuracy on all of the owner's data (held-out figures: ``claim.embedding``)."""


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


def _held_out_score(module: OnnxModule, x: torch.Tensor, y: torch.Tensor) -> tuple[int, float]:
    """(correct count, minus the mean loss): larger is better, the loss breaks ties."""
    module.eval()
    with torch.no_grad():
        out = module(x)
        correct = int((out.argmax(dim=1) == y).sum().item())
        return correct, -float(module.logits_loss(out, y).item())


# A bit is "in with margin" once b_i * z_i reaches this fraction of the plan's margin.
_IN_FRACTION = 0.25
# Step sizes tried, as fractions of ``lr``, until the held-out drop is within ``max_drop``.
_LR_SCALES = (1.0, 1.0 / 3.0)


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
    holdout: float = 0.2,
    holdout_data: tuple[npt.NDArray[np.floating], npt.NDArray[np.integer]] | None = None,
    max_drop: float = 0.5,
    seed: int = 0,
) -> EmbedResult:
    """Embed the owner's mark in ``model`` (ONNX bytes) using the owner's data ``x``, ``y``.

    ``holdout`` (a fraction in [0, 1)) of the rows, drawn with ``seed``, is kept out of a
    selection fine-tune that measures the accuracy the mark costs and chooses the step size
    (``lr``, else ``lr / 3``: see the module docstring); ``holdout_data`` (inputs, labels)
    instead names rows the model was never trained on, and then every row of ``x`` is trained
    on. ``max_drop`` is the goal in percentage points. With ``holdout=0`` and no
    ``holdout_data`` every row is trained on and the claim carries no embedding report.
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
    if not 0 <= holdout < 1:
        raise WatermarkError(f"holdout fraction {holdout} is not in [0, 1)")
    if max_drop < 0:
        raise WatermarkError(f"max_drop {max_drop} is negative")
    n_hold = round(holdout * len(x)) if holdout_data is None else len(holdout_data[0])
    if holdout_data is not None and (n_hold == 0 or len(holdout_data[1]) != n_hold):
        raise WatermarkError(f"held-out data has {n_hold} inputs and {len(holdout_data[1])} labels")
    if holdout_data is None and holdout > 0 and not 1 <= n_hold < len(x):
        raise WatermarkError(f"cannot hold out {holdout:.0%} of {len(x)} rows")
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
    if holdout_data is None:
        split = torch.randperm(len(data_x), generator=torch.Generator().manual_seed(seed))
        hold_x, hold_y = data_x[split[:n_hold]], data_y[split[:n_hold]]
        fit_x, fit_y = data_x[split[n_hold:]], data_y[split[n_hold:]]
    else:
        hold_x = torch.from_numpy(np.asarray(holdout_data[0], dtype=np.float32))
        hold_y = torch.from_numpy(np.asarray(holdout_data[1], dtype=np.int64))
        if tuple(hold_x.shape[1:]) != tuple(data_x.shape[1:]):
            raise WatermarkError(
                f"held-out inputs have shape {tuple(hold_x.shape[1:])}, the owner data "
                f"{tuple(data_x.shape[1:])}"
            )
        if int(hold_y.max()) >= num_classes or int(hold_y.min()) < 0:
            raise WatermarkError(f"held-out labels fall outside the model's {num_classes} classes")
        fit_x, fit_y = data_x, data_y
    correct_before, loss_before = _held_out_score(module, hold_x, hold_y) if n_hold else (0, 0.0)

    param = module.parameter_for(located.initializer)
    reg = WatermarkRegularizer(plan)
    with torch.no_grad():
        weight = _canonical(param, located).double()
        if reduce == "unit_gram":
            # Not linear in the weights: the regularised fine-tune alone moves the bits.
            new_weight = weight
        elif reduce == "centered":
            shifted = min_norm_shift(weight.numpy(), plan.projection(), plan.message(), margin)
            new_weight = torch.from_numpy(shifted)
        else:
            # The mean over output channels moves by d when every channel moves by d.
            mean = weight.mean(0).numpy()
            shifted = min_norm_shift(mean, plan.projection(), plan.message(), margin, center=False)
            new_weight = weight + torch.from_numpy(shifted - mean)
        _canonical(param, located).copy_(new_weight.float())
    start_state = {k: v.detach().clone() for k, v in module.state_dict().items()}

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

    message = torch.from_numpy(plan.message().astype(np.float32))

    def mark_is_in() -> bool:
        with torch.no_grad():
            z = reg.projected(_canonical(param, located))
        return bool((message * z >= _IN_FRACTION * margin).all())

    def fine_tune(
        rows_x: torch.Tensor,
        rows_y: torch.Tensor,
        step_lr: float,
    ) -> None:
        """Fine-tune from the shifted start for the whole budget (cosine to zero)."""
        module.load_state_dict(start_state)
        optimizer = torch.optim.Adam(module.parameters(), lr=step_lr)
        n = len(rows_x)
        steps = max(1, epochs * ((n + batch_size - 1) // batch_size))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        for _ in range(epochs):
            module.train()
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                loss = module.logits_loss(module(rows_x[idx]), rows_y[idx])
                if trig_x is not None and trig_y is not None:
                    pick = torch.randint(
                        0, len(trig_x), (min(8, len(trig_x)),), generator=generator
                    )
                    trig_loss = module.logits_loss(module(trig_x[pick]), trig_y[pick])
                    loss = loss + trigger_weight * trig_loss
                loss = loss + strength * reg(_canonical(param, located))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()

    embedding = None
    if not n_hold:
        fine_tune(data_x, data_y, lr)
    else:
        # Choose the step size on the held-out rows: the first that ends with every bit in
        # with margin, the held-out loss back to the unmarked model's and the accuracy within
        # ``max_drop`` points (else the best that keeps the mark), and report its held-out
        # counts. With a split, fine-tune on all rows at that step size for the release; with
        # ``holdout_data`` the selection run already trained on every row and is the release.
        goal = (correct_before - max_drop / 100.0 * n_hold, loss_before)
        best: tuple[tuple[int, float], float, dict[str, torch.Tensor]] | None = None
        for scale in _LR_SCALES:
            fine_tune(fit_x, fit_y, lr * scale)
            if not mark_is_in():
                continue
            score = _held_out_score(module, hold_x, hold_y)
            if best is None or score > best[0]:
                state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                best = (score, lr * scale, state)
            if score[0] >= goal[0] and score[1] >= goal[1]:
                break
        if best is not None:
            embedding = EmbeddingReport(n_hold, correct_before, best[0][0])
        if best is not None and holdout_data is not None:
            module.load_state_dict(best[2])  # trained on every row already: it is the release
        else:
            fine_tune(data_x, data_y, lr if best is None else best[1])
    accuracy_after = _accuracy(module, data_x, data_y)

    marked = write_back(proto, module).SerializeToString()
    claim = plan.claim(owner_key, trigger=trigger_params, now=now, embedding=embedding)
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
