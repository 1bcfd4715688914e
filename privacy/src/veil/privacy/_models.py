"""Built-in model architectures, configured by a frozen ``ModelSpec`` (loadable from TOML)."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opacus.grad_sample import GradSampleModule
from opacus.validators import ModuleValidator
from torch import nn

from veil.sdk.errors import ConfigError

__all__ = ["ModelSpec", "build_model", "make_private_compatible"]

_KINDS = ("logreg", "mlp", "cnn")
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}
_NORMS = ("none", "group", "batch")


@dataclass(frozen=True)
class ModelSpec:
    """What to train: ``kind`` is ``logreg``, ``mlp`` or ``cnn``.

    ``input_shape`` is one row's shape: ``(features,)`` for logreg/MLP (a multi-dimensional shape
    is flattened) and ``(channels, height, width)`` for the CNN. ``hidden`` are the MLP's layer
    widths, ``channels`` the CNN's convolution widths. ``norm="batch"`` asks for BatchNorm, which
    DP-SGD cannot use (it mixes samples); it is replaced by GroupNorm through Opacus'
    ``ModuleValidator.fix`` and the record says so through ``name``.
    """

    kind: str
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: tuple[int, ...] = (64,)
    channels: tuple[int, ...] = (16, 32)
    activation: str = "relu"
    norm: str = "none"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ConfigError(f"model kind {self.kind!r} is not built in; choose one of {_KINDS}")
        if not self.input_shape or any(int(d) <= 0 for d in self.input_shape):
            raise ConfigError(f"model input_shape {self.input_shape} must be positive dimensions")
        if self.num_classes < 2:
            raise ConfigError(f"model num_classes is {self.num_classes}; need at least 2")
        if self.activation not in _ACTIVATIONS:
            raise ConfigError(
                f"activation {self.activation!r} unsupported; choose one of {sorted(_ACTIVATIONS)}"
            )
        if self.norm not in _NORMS:
            raise ConfigError(f"norm {self.norm!r} unsupported; choose one of {_NORMS}")
        if any(h <= 0 for h in self.hidden) or any(c <= 0 for c in self.channels):
            raise ConfigError("model hidden sizes and channels must be positive")
        if self.kind == "cnn":
            if len(self.input_shape) != 3:
                raise ConfigError(
                    f"cnn input_shape {self.input_shape} must be (channels, height, width)"
                )
            if not self.channels:
                raise ConfigError("cnn needs at least one convolution channel width")

    @property
    def name(self) -> str:
        """A stable, human-readable architecture name (goes into training records)."""
        shape = "x".join(str(d) for d in self.input_shape)
        if self.kind == "logreg":
            return f"logreg[{shape}->{self.num_classes}]"
        if self.kind == "mlp":
            hid = "-".join(str(h) for h in self.hidden)
            return f"mlp[{shape}->{hid}->{self.num_classes},{self.activation},{self.norm}]"
        ch = "-".join(str(c) for c in self.channels)
        return f"cnn[{shape}->{ch}->{self.num_classes},{self.activation},{self.norm}]"

    @property
    def input_size(self) -> int:
        return math.prod(self.input_shape)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> ModelSpec:
        """Build from a parsed mapping (TOML table or JSON object); unknown keys are refused."""
        known = {"kind", "input_shape", "num_classes", "hidden", "channels", "activation", "norm"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"model spec has unknown key(s) {sorted(unknown)}")
        missing = {"kind", "input_shape", "num_classes"} - set(raw)
        if missing:
            raise ConfigError(f"model spec lacks required key(s) {sorted(missing)}")
        try:
            kwargs: dict[str, Any] = {
                "kind": str(raw["kind"]),
                "input_shape": _int_tuple(raw["input_shape"], "input_shape"),
                "num_classes": _int(raw["num_classes"], "num_classes"),
            }
            for key in ("hidden", "channels"):
                if key in raw:
                    kwargs[key] = _int_tuple(raw[key], key)
            for key in ("activation", "norm"):
                if key in raw:
                    if not isinstance(raw[key], str):
                        raise ConfigError(f"model spec {key} must be a string")
                    kwargs[key] = raw[key]
        except (TypeError, KeyError) as exc:
            raise ConfigError(f"model spec is malformed: {exc}") from exc
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, text: str | bytes) -> ModelSpec:
        """Parse a TOML document; the spec is the ``[model]`` table, or the top level."""
        try:
            doc = tomllib.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"model spec is not valid TOML: {exc}") from exc
        table = doc.get("model", doc)
        if not isinstance(table, dict):
            raise ConfigError("model spec [model] must be a table")
        return cls.from_mapping(table)


def _int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"model spec {key} must be an integer, got {value!r}")
    return value


def _int_tuple(value: object, key: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"model spec {key} must be a list of integers, got {value!r}")
    return tuple(_int(v, key) for v in value)


def build_model(spec: ModelSpec) -> nn.Module:
    """Instantiate the architecture (with torch's default initialisation: seed torch first)."""
    act = _ACTIVATIONS[spec.activation]
    layers: list[nn.Module] = []
    if spec.kind == "logreg":
        layers = [nn.Flatten(), nn.Linear(spec.input_size, spec.num_classes)]
    elif spec.kind == "mlp":
        layers = [nn.Flatten()]
        width = spec.input_size
        for h in spec.hidden:
            layers.append(nn.Linear(width, h))
            if spec.norm == "batch":
                layers.append(nn.BatchNorm1d(h))
            elif spec.norm == "group":
                layers.append(nn.GroupNorm(_groups(h), h))
            layers.append(act())
            width = h
        layers.append(nn.Linear(width, spec.num_classes))
    else:
        c, h, w = spec.input_shape
        for out in spec.channels:
            layers.append(nn.Conv2d(c, out, kernel_size=3, padding=1))
            if spec.norm == "batch":
                layers.append(nn.BatchNorm2d(out))
            elif spec.norm == "group":
                layers.append(nn.GroupNorm(_groups(out), out))
            layers.append(act())
            if h >= 2 and w >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        layers += [nn.Flatten(), nn.Linear(c * h * w, spec.num_classes)]
    return make_private_compatible(nn.Sequential(*layers))


def _groups(width: int) -> int:
    for g in (8, 4, 2):
        if width % g == 0:
            return g
    return 1


def make_private_compatible(module: nn.Module) -> nn.Module:
    """Return ``module`` fixed for DP-SGD (BatchNorm → GroupNorm) or raise ``ConfigError``.

    Layers Opacus cannot fix (ones that mix samples or lack per-sample gradients) are refused
    with the validator's reason.
    """
    fixed = module
    if ModuleValidator.validate(module, strict=False):
        fixed = ModuleValidator.fix(module)
    errors = [
        *ModuleValidator.validate(fixed, strict=False),
        *GradSampleModule.validate(fixed, strict=False),
    ]
    if errors:
        reasons = "; ".join(str(e) for e in errors[:3])
        raise ConfigError(f"model has layers DP-SGD cannot train: {reasons}")
    assert isinstance(fixed, nn.Module)
    return fixed
