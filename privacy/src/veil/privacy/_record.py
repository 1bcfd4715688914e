"""The training record: what a DP training job did, as canonical (RFC 8785) JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

import rfc8785

from veil.sdk.errors import ConfigError

__all__ = ["TrainingRecord"]


@dataclass(frozen=True)
class TrainingRecord:
    """Everything needed to re-derive the privacy claim of one trained model.

    ``epsilon`` is the ``accountant``'s upper bound for ``steps`` Poisson-sampled Gaussian steps
    at ``noise_multiplier`` and ``sample_rate``, at ``delta``. ``model_sha256`` is the digest of the
    exported ONNX bytes and ``dataset_sha256`` that of the uploaded dataset bytes.
    ``feature_min``/``feature_max`` are the dataset's declared feature range (every feature was
    checked to lie in it), ``device`` the torch device type the job trained on (``cpu``,
    ``cuda``).
    """

    model: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    epsilon: float
    accountant: str
    max_grad_norm: float
    dataset_sha256: str
    num_rows: int
    feature_min: float
    feature_max: float
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    grad_sample_mode: str
    secure_rng: bool
    world_size: int
    device: str
    model_sha256: str
    opacus_version: str
    torch_version: str

    def to_json(self) -> bytes:
        """Canonical JSON (RFC 8785): byte-identical for equal records, ready to sign."""
        return bytes(rfc8785.dumps(asdict(self)))

    @classmethod
    def from_json(cls, data: bytes | str) -> TrainingRecord:
        try:
            raw = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"training record is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError("training record must be a JSON object")
        names = {f.name: f.type for f in fields(cls)}
        if set(raw) != set(names):
            diff = sorted(set(raw) ^ set(names))
            raise ConfigError(f"training record fields differ from the schema: {diff}")
        values: dict[str, Any] = {}
        for name, typ in names.items():
            v = raw[name]
            ok = {
                "str": isinstance(v, str),
                "int": isinstance(v, int) and not isinstance(v, bool),
                "float": isinstance(v, int | float) and not isinstance(v, bool),
                "bool": isinstance(v, bool),
            }[str(typ)]
            if not ok:
                raise ConfigError(f"training record field {name!r} must be {typ}, got {v!r}")
            values[name] = float(v) if typ == "float" else v
        return cls(**values)
