"""Built-in model specs: TOML parsing, architectures, DP-compatibility fixes and refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from veil.privacy import ModelSpec, build_model, make_private_compatible
from veil.sdk.errors import ConfigError


def test_spec_from_toml_model_table() -> None:
    spec = ModelSpec.from_toml(
        '[model]\nkind = "mlp"\ninput_shape = [64]\nnum_classes = 10\n'
        'hidden = [32, 16]\nactivation = "tanh"\n'
    )
    assert spec == ModelSpec("mlp", (64,), 10, hidden=(32, 16), activation="tanh")
    assert spec.name == "mlp[64->32-16->10,tanh,none]"


@pytest.mark.parametrize(
    ("spec", "shape", "out"),
    [
        (ModelSpec("logreg", (64,), 10), (5, 64), (5, 10)),
        (ModelSpec("mlp", (64,), 3, hidden=(8, 8)), (5, 64), (5, 3)),
        (ModelSpec("cnn", (1, 8, 8), 10), (5, 1, 8, 8), (5, 10)),
        (ModelSpec("cnn", (1, 28, 28), 10, channels=(4, 8)), (2, 1, 28, 28), (2, 10)),
        (ModelSpec("cnn", (3, 1, 1), 2, channels=(4,)), (2, 3, 1, 1), (2, 2)),
    ],
)
def test_build_model_shapes(spec: ModelSpec, shape: tuple[int, ...], out: tuple[int, ...]) -> None:
    model = build_model(spec)
    assert model(torch.zeros(shape)).shape == out


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_batchnorm_is_replaced_by_groupnorm(kind: str) -> None:
    shape = (64,) if kind == "mlp" else (1, 8, 8)
    model = build_model(ModelSpec(kind, shape, 10, norm="batch"))
    kinds = {type(m) for m in model.modules()}
    assert nn.GroupNorm in kinds
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)


def test_unfixable_layer_is_refused() -> None:
    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))
            self.register_buffer("seen", torch.zeros(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.w

    with pytest.raises(ConfigError, match="DP-SGD cannot train"):
        make_private_compatible(nn.Sequential(nn.Linear(2, 2), Counting()))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('kind = "rnn"\ninput_shape = [4]\nnum_classes = 2', "not built in"),
        ('kind = "mlp"\ninput_shape = [4]', "lacks required"),
        ('kind = "mlp"\ninput_shape = [4]\nnum_classes = 2\nextra = 1', "unknown key"),
        ('kind = "cnn"\ninput_shape = [64]\nnum_classes = 2', "channels, height, width"),
        ('kind = "mlp"\ninput_shape = [0]\nnum_classes = 2', "positive dimensions"),
        ('kind = "mlp"\ninput_shape = [4]\nnum_classes = 1', "at least 2"),
        ('kind = "mlp"\ninput_shape = [4]\nnum_classes = 2\nactivation = "swish"', "activation"),
        ('kind = "mlp"\ninput_shape = [4]\nnum_classes = 2\nnorm = "layer"', "norm"),
        ('kind = "mlp"\ninput_shape = [4]\nnum_classes = 2\nhidden = [0]', "positive"),
        ('kind = "mlp"\ninput_shape = 4\nnum_classes = 2', "list of integers"),
        ('kind = "mlp"\ninput_shape = [4]\nnum_classes = "2"', "must be an integer"),
        ('kind = "mlp"\ninput_shape = [true]\nnum_classes = 2', "must be an integer"),
        ("kind = ", "not valid TOML"),
    ],
)
def test_bad_specs(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelSpec.from_toml(text)
