"""The keyed trigger set for black-box checks: inputs and labels derived from the watermark key.

Inputs are uniform in ``[low, high)`` and labels uniform over ``num_classes``, both drawn from the
SHAKE-256 XOF of the secret; the claim carries a SHA-256 commitment to the exact arrays, so the
labels are fixed before the model is released.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from veil.sdk.errors import WatermarkError

__all__ = ["TriggerParams", "TriggerSet", "derive_trigger_set"]

_INPUT_DOMAIN = b"veil-wm-trigger-inputs-v1"
_LABEL_DOMAIN = b"veil-wm-trigger-labels-v1"
_COMMIT_DOMAIN = b"veil-wm-trigger-commit-v1"

Predictor = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.generic]]


@dataclass(frozen=True)
class TriggerParams:
    """How the trigger set is derived, and the commitment to its arrays (all in the claim)."""

    count: int
    num_classes: int
    input_shape: tuple[int, ...]
    low: float
    high: float
    commitment: bytes

    def __post_init__(self) -> None:
        if not 1 <= self.count <= 4096:
            raise WatermarkError(f"trigger count {self.count} is outside [1, 4096]")
        if self.num_classes < 2:
            raise WatermarkError(f"trigger set needs at least 2 classes, got {self.num_classes}")
        if not self.input_shape or any(d <= 0 for d in self.input_shape):
            raise WatermarkError(f"trigger input shape {self.input_shape} is invalid")
        if not self.low < self.high:
            raise WatermarkError(f"trigger range [{self.low}, {self.high}) is empty")
        if len(self.commitment) != 32:
            raise WatermarkError("trigger commitment must be 32 bytes")

    def to_dict(self) -> dict[str, object]:
        return {
            "count": self.count,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "low": repr(float(self.low)),
            "high": repr(float(self.high)),
            "commitment": self.commitment.hex(),
        }

    @classmethod
    def from_dict(cls, data: object) -> TriggerParams:
        if not isinstance(data, dict):
            raise WatermarkError("trigger parameters must be a JSON object")
        try:
            shape = data["input_shape"]
            if not isinstance(shape, list) or not all(type(d) is int for d in shape):
                raise WatermarkError("trigger input_shape must be a list of integers")
            count, classes = data["count"], data["num_classes"]
            if type(count) is not int or type(classes) is not int:
                raise WatermarkError("trigger count and num_classes must be integers")
            return cls(
                count=count,
                num_classes=classes,
                input_shape=tuple(shape),
                low=float(str(data["low"])),
                high=float(str(data["high"])),
                commitment=bytes.fromhex(str(data["commitment"])),
            )
        except (KeyError, ValueError) as exc:
            raise WatermarkError(f"trigger parameters are malformed: {exc}") from exc


@dataclass(frozen=True)
class TriggerSet:
    inputs: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]

    def commitment(self) -> bytes:
        h = hashlib.sha256(_COMMIT_DOMAIN)
        h.update(np.asarray(self.inputs.shape, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.inputs, dtype="<f4").tobytes())
        h.update(np.ascontiguousarray(self.labels, dtype="<i8").tobytes())
        return h.digest()


def derive_trigger_set(
    secret: bytes,
    count: int,
    num_classes: int,
    input_shape: tuple[int, ...],
    low: float,
    high: float,
) -> TriggerSet:
    """The trigger set for ``secret`` (a pure function of its arguments)."""
    if count < 1 or num_classes < 2 or not input_shape:
        raise WatermarkError("trigger set needs count >= 1, num_classes >= 2 and an input shape")
    per_input = int(np.prod(input_shape))
    seed = _INPUT_DOMAIN + secret + count.to_bytes(4, "big")
    raw = hashlib.shake_256(seed).digest(8 * count * per_input)
    u = (np.frombuffer(raw, dtype="<u8") >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    inputs = (low + (high - low) * u).astype(np.float32).reshape((count, *input_shape))
    labels = _uniform_labels(secret, count, num_classes)
    return TriggerSet(inputs=inputs, labels=labels)


def _uniform_labels(secret: bytes, count: int, num_classes: int) -> npt.NDArray[np.int64]:
    """Unbiased labels by rejection sampling 32-bit words from the XOF."""
    limit = (1 << 32) - ((1 << 32) % num_classes)
    labels: list[int] = []
    need = count
    block = 0
    while need > 0:
        seed = _LABEL_DOMAIN + secret + block.to_bytes(4, "big")
        words = np.frombuffer(hashlib.shake_256(seed).digest(4 * (2 * count + 8)), dtype="<u4")
        for w in words:
            if int(w) < limit:
                labels.append(int(w) % num_classes)
                need -= 1
                if need == 0:
                    break
        block += 1
    return np.asarray(labels, dtype=np.int64)
