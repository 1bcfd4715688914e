"""The benchmark's cases: an ONNX model and one request's input, each made locally, seeded.

Every path of the benchmark (in-process ONNX Runtime, the plain gRPC server, ``veil serve``)
runs the same model file on the same input array, so their numbers differ only by what lies
between the caller and ONNX Runtime.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["CASES", "Case", "write_models"]

INPUT = "x"
OUTPUT = "y"


@dataclass(frozen=True)
class Case:
    """One benchmark case: a model, the shape of one request's input, and what it stands for."""

    name: str  # also the model's name on every server
    label: str
    shape: tuple[int, ...]
    layers: tuple[int, ...] = ()  # an MLP's widths, input first; empty: a row mean (tiny compute)

    @property
    def payload_bytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def input(self) -> npt.NDArray[np.float32]:
        """The request's input: float32, seeded, the same in every process."""
        return np.random.default_rng(1).normal(size=self.shape).astype(np.float32)

    def model(self) -> bytes:
        return _mlp(self.layers) if self.layers else _row_mean(self.shape[-1])


# Ordered as tables and plots show them.
CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("mlp-1kb", "256-256-10 MLP, batch 1 (1 KB in)", (1, 256), (256, 256, 10)),
        Case(
            "mlp-64kb",
            "512-1024-1024-10 MLP, batch 32 (64 KB in)",
            (32, 512),
            (512, 1024, 1024, 10),
        ),
        Case("mean-1mb", "256x1024 float32 in (1 MB), row mean (tiny compute)", (256, 1024)),
        Case(
            "mlp-compute",
            "256-2048-2048-2048-10 MLP, batch 32 (compute-bound)",
            (32, 256),
            (256, 2048, 2048, 2048, 10),
        ),
    )
}


def write_models(folder: Path, cases: list[Case]) -> dict[str, Path]:
    """Write each case's model to ``folder/<name>.onnx``; return the paths by case name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for case in cases:
        path = folder / f"{case.name}.onnx"
        path.write_bytes(case.model())
        paths[case.name] = path
    return paths


def _finish(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _mlp(widths: tuple[int, ...], seed: int = 0) -> bytes:
    """MatMul-Add(-Relu) layers with fixed random weights (scaled so activations stay O(1))."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = INPUT
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(widths)):
        w = (rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"W{i}"),
            numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{i}"),
        ]
        last = i == len(widths) - 2
        nodes += [
            helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [OUTPUT if last else f"a{i}"]),
        ]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"h{i}"]))
            current = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", widths[0]])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", widths[-1]])],
        inits,
    )
    return _finish(graph)


def _row_mean(width: int) -> bytes:
    """A large input and almost no compute: each row's mean (so the answer is small)."""
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", [INPUT], [OUTPUT], axes=[1], keepdims=1)],
        "row_mean",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 1])],
    )
    return _finish(graph)
