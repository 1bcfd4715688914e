"""Verification: white-box (weights) and black-box (trigger set), with exact p-values.

What verification needs: the signed claim (public) and the watermark key, revealed at
verification time as the opening of the claim's commitment. From the key the verifier derives
the projection matrix and the trigger set; from the claim's owner key, the message bits. Only
onnx and numpy are imported here (onnxruntime only if you ask for :func:`onnx_predictor`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import onnx
from google.protobuf.message import DecodeError

from veil.sdk import WatermarkCheck
from veil.sdk.errors import WatermarkError
from veil.watermark._claim import ProjectionParams, WatermarkClaim
from veil.watermark._invariants import kernel_bag
from veil.watermark._keys import WatermarkKey, derive_projection, message_bits
from veil.watermark._locate import locate
from veil.watermark._pvalue import binomial_tail
from veil.watermark._trigger import derive_trigger_set

__all__ = [
    "DEFAULT_THRESHOLD",
    "TriggerVerdict",
    "WatermarkVerdict",
    "combine",
    "load_model",
    "mark_matches",
    "onnx_predictor",
    "projected_signs",
    "reduce_weight",
    "verify",
    "verify_trigger",
]

DEFAULT_THRESHOLD = 1e-9

Predictor = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.generic]]


WatermarkVerdict = WatermarkCheck
"""The white-box verdict: the SDK's :class:`~veil.sdk.WatermarkCheck` (one type, defined there)."""


@dataclass(frozen=True)
class TriggerVerdict:
    """Outcome of a black-box check against chance ``1/num_classes``."""

    detected: bool
    p_value: float
    matches: int
    count: int
    chance: float
    threshold: float


def load_model(model: bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Parse ONNX bytes (or pass a ModelProto through), converting parse errors."""
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        parsed = onnx.load_model_from_string(model)
    except (DecodeError, ValueError) as exc:
        raise WatermarkError(f"model is not a valid ONNX protobuf: {exc}") from exc
    if not parsed.graph.node:
        raise WatermarkError("model has an empty graph")
    return parsed


def reduce_weight(weight: npt.NDArray[np.float64], reduce: str) -> npt.NDArray[np.float64]:
    """The vector the projection reads (see :class:`ProjectionParams`)."""
    if reduce == "centered":
        centered: npt.NDArray[np.float64] = (weight - weight.mean(axis=0, keepdims=True)).reshape(
            -1
        )
        return centered
    if reduce == "channel_mean":
        mean: npt.NDArray[np.float64] = weight.mean(axis=0).reshape(-1)
        return mean
    if reduce == "unit_gram":
        rows = weight.reshape(weight.shape[0], -1)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        unit = rows / np.maximum(norms, 1e-12)
        upper = (unit.T @ unit)[np.triu_indices(rows.shape[1], k=1)]
        gram: npt.NDArray[np.float64] = upper - upper.mean()
        return gram
    if reduce == "kernel_bag":
        return kernel_bag(weight)
    raise WatermarkError(f"unknown reduction {reduce!r}")


def projected_signs(
    vector: npt.NDArray[np.float64], projection: npt.NDArray[np.float64]
) -> npt.NDArray[np.int8]:
    """sign(X v) as +1/-1, with an exact zero counted as 0 (never a match)."""
    return np.sign(projection @ vector).astype(np.int8)


def _check_opening(claim: WatermarkClaim, key: WatermarkKey) -> None:
    if not key.opens(claim.commitment):
        raise WatermarkError("watermark key does not open the claim's commitment")


def verify(
    model: bytes | onnx.ModelProto,
    claim: WatermarkClaim,
    key: WatermarkKey,
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> WatermarkVerdict:
    """White-box check of ``model`` against ``claim``, with ``key`` revealed as the opening.

    Raises :class:`WatermarkError` if the claim's signature fails, the key does not open the
    claim's commitment, the model does not parse, or the model has no layer the claim names.
    Otherwise returns the verdict; ``p_value`` is the exact P[X >= matches], X ~ Bin(n, 1/2),
    and for a claim with a second mark the Bonferroni combination of both (:func:`combine`;
    ``matches`` is then the stronger mark's).
    """
    if not 0 < threshold < 1:
        raise WatermarkError(f"threshold {threshold} is not in (0, 1)")
    claim.verify_signature()
    _check_opening(claim, key)
    proto = load_model(model)
    digest = hashlib.sha256(
        model if isinstance(model, bytes) else model.SerializeToString()
    ).hexdigest()
    try:
        layer = locate(proto, claim.layer)
    except WatermarkError:
        raise
    except Exception as exc:  # a hostile graph must not escape as a third-party error
        raise WatermarkError(f"could not read the model's weights: {exc}") from exc
    message = message_bits(claim.owner_public_key, claim.n_bits)
    marks = [mark_matches(layer.weight, claim.projection, key, message, 0)]
    if claim.second is not None:
        marks.append(mark_matches(layer.weight, claim.second, key, message, 1))
    matches, p_value = combine(marks, claim.n_bits)
    return WatermarkVerdict(
        detected=p_value < threshold,
        p_value=p_value,
        matches=matches,
        n_bits=claim.n_bits,
        threshold=threshold,
        model_sha256=digest,
        claim_sha256=claim.digest(),
        layer_node=layer.node_name,
    )


def mark_matches(
    weight: npt.NDArray[np.float64],
    params: ProjectionParams,
    key: WatermarkKey,
    message: npt.NDArray[np.int8],
    mark: int,
) -> int:
    """How many of ``message``'s bits one mark of a claim (``mark`` 0 or 1) carries."""
    vector = reduce_weight(weight, params.reduce)
    if vector.size != params.dim:
        raise WatermarkError(
            f"reduced weight has {vector.size} values, the claim's projection expects {params.dim}"
        )
    projection = derive_projection(key.secret, len(message), params.dim, mark=mark)
    return int(np.sum(projected_signs(vector, projection) == message))


def combine(matches: list[int], n_bits: int) -> tuple[int, float]:
    """(matches of the stronger mark, combined p-value) for a claim's marks.

    One mark: its exact tail ``P[Bin(n, 1/2) >= k]``. Two: Bonferroni,
    ``min(1, 2 * min(p1, p2))``, which bounds the chance that either mark reaches its count
    by luck whatever the dependence between the two, so the verdict stays exact (conservative).
    """
    tails = [binomial_tail(k, n_bits, Fraction(1, 2)) for k in matches]
    best = min(range(len(tails)), key=lambda i: tails[i])
    return matches[best], min(1.0, len(tails) * tails[best])


def verify_trigger(
    predict: Predictor,
    claim: WatermarkClaim,
    key: WatermarkKey,
    *,
    threshold: float = DEFAULT_THRESHOLD,
) -> TriggerVerdict:
    """Black-box check: query ``predict`` (inputs -> logits or labels) on the keyed trigger set.

    The trigger set re-derived from ``key`` must match the claim's trigger commitment; the
    p-value is the exact P[X >= matches], X ~ Bin(count, 1/num_classes).
    """
    if not 0 < threshold < 1:
        raise WatermarkError(f"threshold {threshold} is not in (0, 1)")
    claim.verify_signature()
    _check_opening(claim, key)
    params = claim.trigger
    if params is None:
        raise WatermarkError("claim has no trigger set")
    triggers = derive_trigger_set(
        key.secret, params.count, params.num_classes, params.input_shape, params.low, params.high
    )
    if triggers.commitment() != params.commitment:
        raise WatermarkError("derived trigger set does not match the claim's trigger commitment")
    try:
        outputs = np.asarray(predict(triggers.inputs))
    except WatermarkError:
        raise
    except Exception as exc:
        raise WatermarkError(f"querying the suspect model failed: {exc}") from exc
    if outputs.ndim == 2 and outputs.shape == (params.count, params.num_classes):
        predicted = outputs.argmax(axis=1)
    elif outputs.shape == (params.count,):
        predicted = outputs.astype(np.int64)
    else:
        raise WatermarkError(
            f"suspect model returned shape {outputs.shape}, expected ({params.count},) labels "
            f"or ({params.count}, {params.num_classes}) scores"
        )
    matches = int(np.sum(predicted == triggers.labels))
    p_value = binomial_tail(matches, params.count, Fraction(1, params.num_classes))
    return TriggerVerdict(
        detected=p_value < threshold,
        p_value=p_value,
        matches=matches,
        count=params.count,
        chance=1.0 / params.num_classes,
        threshold=threshold,
    )


def onnx_predictor(model: bytes) -> Predictor:
    """A predictor querying an onnxruntime CPU session of ``model`` (first input, first output)."""
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise WatermarkError(f"onnxruntime could not load the suspect model: {exc}") from exc
    name = session.get_inputs()[0].name

    def predict(inputs: npt.NDArray[np.float32]) -> npt.NDArray[np.generic]:
        out = session.run(None, {name: inputs.astype(np.float32)})[0]
        return np.asarray(out)

    return predict
