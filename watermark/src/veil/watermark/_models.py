"""Small reference models (an MLP and a CNN for 8x8 digits), their training, and ONNX export.

Export writes the ONNX graph directly with ``onnx.helper`` (Gemm/Conv/Relu/MaxPool/Flatten), so
it is fast, deterministic and needs no exporter package. Used by the benchmark and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

M = TypeVar("M", bound=torch.nn.Module)

__all__ = [
    "DigitsData",
    "SmallCNN",
    "SmallMLP",
    "accuracy",
    "load_digits",
    "to_onnx",
    "train",
]


class SmallMLP(torch.nn.Module):
    """64 -> 128 -> 64 -> 10 with ReLU; input (N, 64)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 128)
        self.fc2 = torch.nn.Linear(128, 64)
        self.fc3 = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out


class SmallCNN(torch.nn.Module):
    """conv 1->16 3x3, pool, conv 16->32 3x3, pool, dense 128->10; input (N, 1, 8, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc = torch.nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        out: torch.Tensor = self.fc(x.flatten(1))
        return out


@dataclass(frozen=True)
class DigitsData:
    """scikit-learn's 8x8 digits scaled to [0, 1], split into train/fresh/test."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_fresh: npt.NDArray[np.float32]
    y_fresh: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]

    def shaped(self, image: bool) -> DigitsData:
        """Arrays shaped (N, 1, 8, 8) for the CNN when ``image`` is true, else (N, 64)."""
        shape = (-1, 1, 8, 8) if image else (-1, 64)
        return DigitsData(
            self.x_train.reshape(shape),
            self.y_train,
            self.x_fresh.reshape(shape),
            self.y_fresh,
            self.x_test.reshape(shape),
            self.y_test,
        )


def load_digits(seed: int = 0) -> DigitsData:
    """Digits (1797 images) split 50% train, 20% fresh (attacker's data), 30% test."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 64)
    y = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    a, b = int(0.5 * len(x)), int(0.7 * len(x))
    return DigitsData(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:])


def train(
    model: M,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.int64],
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> M:
    """Plain Adam training with cross-entropy; ``seed`` fixes the data order."""
    generator = torch.Generator().manual_seed(seed)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(tx), generator=generator)
        for start in range(0, len(tx), batch_size):
            idx = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(model(tx[idx]), ty[idx])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    model.eval()
    return model


def accuracy(model: torch.nn.Module, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float(np.mean(pred == y))


def _init(name: str, tensor: torch.Tensor | None) -> onnx.TensorProto:
    if tensor is None:
        raise ValueError(f"layer {name} has no tensor")
    return numpy_helper.from_array(tensor.detach().cpu().numpy().astype(np.float32), name)


def to_onnx(model: SmallMLP | SmallCNN) -> bytes:
    """The model as an ONNX graph (opset 17), input ``x`` and output ``logits``."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    if isinstance(model, SmallMLP):
        input_shape: list[str | int] = ["N", 64]
        current = "x"
        for i, fc in enumerate((model.fc1, model.fc2, model.fc3), start=1):
            inits += [_init(f"fc{i}.weight", fc.weight), _init(f"fc{i}.bias", fc.bias)]
            out = "logits" if i == 3 else f"h{i}"
            gemm_out = out if i == 3 else f"g{i}"
            nodes.append(
                helper.make_node(
                    "Gemm", [current, f"fc{i}.weight", f"fc{i}.bias"], [gemm_out],
                    name=f"fc{i}", transB=1,
                )
            )  # fmt: skip
            if i < 3:
                nodes.append(helper.make_node("Relu", [gemm_out], [out], name=f"relu{i}"))
            current = out
    else:
        input_shape = ["N", 1, 8, 8]
        current = "x"
        for i, conv in enumerate((model.conv1, model.conv2), start=1):
            inits += [_init(f"conv{i}.weight", conv.weight), _init(f"conv{i}.bias", conv.bias)]
            nodes += [
                helper.make_node(
                    "Conv", [current, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"],
                    name=f"conv{i}", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                ),
                helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
                helper.make_node(
                    "MaxPool", [f"r{i}"], [f"p{i}"], name=f"pool{i}",
                    kernel_shape=[2, 2], strides=[2, 2],
                ),
            ]  # fmt: skip
            current = f"p{i}"
        inits += [_init("fc.weight", model.fc.weight), _init("fc.bias", model.fc.bias)]
        nodes += [
            helper.make_node("Flatten", [current], ["flat"], name="flatten", axis=1),
            helper.make_node(
                "Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1
            ),
        ]
    graph = helper.make_graph(
        nodes,
        "veil-small-model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    return proto.SerializeToString()
