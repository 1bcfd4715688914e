"""Find the marked layer by STRUCTURE, never by tensor name.

A layer is named by ``LayerLocator(kind, weight_shape, occurrence)``: "the ``occurrence``-th
weight-bearing layer of ``kind`` ("conv" or "dense") whose weight, in canonical layout, has shape
``weight_shape``, counting in topological order". Canonical layout is PyTorch's: conv weights
``(out, in/groups, kh, kw)``, dense weights ``(out, in)``. Export, graph optimisation and
quantisation rename and fuse tensors, but they keep this description.

Weights are resolved through initializers, sparse initializers, ``Constant`` nodes,
``Identity``/``Cast``/``Transpose`` and ``DequantizeLinear`` (QDQ) chains, and the integer
operators written by ``onnxruntime.quantization`` (``ConvInteger``, ``MatMulInteger``,
``QLinearConv``, ``QLinearMatMul``, ``QGemm``), and ORT's fused ``FusedConv``/``FusedGemm``:
int8/uint8 weights are dequantised, pruned (zero) weights are kept as they are. Only onnx and
numpy are used here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from veil.sdk.errors import WatermarkError

__all__ = ["LayerLocator", "LocatedLayer", "locate", "weight_layers"]

_CONV_OPS = {"Conv", "FusedConv", "ConvInteger", "QLinearConv"}
_DENSE_OPS = {"Gemm", "FusedGemm", "MatMul", "MatMulInteger", "QLinearMatMul", "QGemm"}
_KINDS = ("conv", "dense")

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LayerLocator:
    """Structural address of a weight-bearing layer (see module docstring)."""

    kind: str
    weight_shape: tuple[int, ...]
    occurrence: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise WatermarkError(f"layer kind {self.kind!r} is not one of {_KINDS}")
        rank = 4 if self.kind == "conv" else 2
        if len(self.weight_shape) != rank or any(d <= 0 for d in self.weight_shape):
            raise WatermarkError(
                f"{self.kind} weight shape {self.weight_shape} must have {rank} positive dims"
            )
        if self.occurrence < 0:
            raise WatermarkError(f"layer occurrence {self.occurrence} is negative")

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "weight_shape": list(self.weight_shape),
            "occurrence": self.occurrence,
        }

    @classmethod
    def from_dict(cls, data: object) -> LayerLocator:
        if not isinstance(data, dict):
            raise WatermarkError("layer locator must be a JSON object")
        try:
            kind = data["kind"]
            shape = data["weight_shape"]
            occurrence = data["occurrence"]
        except KeyError as exc:
            raise WatermarkError(f"layer locator lacks field {exc}") from exc
        if (
            not isinstance(kind, str)
            or not isinstance(shape, list)
            or not all(type(d) is int for d in shape)
            or type(occurrence) is not int
        ):
            raise WatermarkError("layer locator fields have the wrong types")
        return cls(kind=kind, weight_shape=tuple(shape), occurrence=occurrence)

    def describe(self) -> str:
        shape = "x".join(str(d) for d in self.weight_shape)
        return f"{self.kind} layer #{self.occurrence} with weight shape {shape}"


@dataclass(frozen=True)
class LocatedLayer:
    """A weight-bearing layer found in a graph, with its weights dequantised to float64."""

    kind: str
    op_type: str
    node_name: str
    weight: FloatArray
    initializer: str | None
    """Name of the float initializer holding the weight, when it is stored directly."""
    transposed: bool
    """Whether the initializer holds the transpose of the canonical weight."""


class _Constants:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self.float_inits: set[str] = set()
        for init in graph.initializer:
            arr = numpy_helper.to_array(init)
            self.arrays[init.name] = arr
            if arr.dtype.kind == "f":
                self.float_inits.add(init.name)
        for sparse in graph.sparse_initializer:
            self.arrays[sparse.values.name] = _sparse_to_dense(sparse)
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                self.consumers.setdefault(inp, []).append(node)
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.arrays[node.output[0]] = numpy_helper.to_array(attr.t)

    def resolve(self, name: str, depth: int = 0) -> tuple[np.ndarray, str | None, bool] | None:
        """(array, float initializer name or None, transposed) for a constant tensor, else None."""
        if not name or depth > 8:
            return None
        if name in self.arrays:
            direct = name if name in self.float_inits else None
            return self.arrays[name], direct, False
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type in ("Identity", "Cast"):
            inner = self.resolve(node.input[0], depth + 1)
            if inner is None:
                return None
            return inner[0].astype(np.float64), inner[1], inner[2]
        if node.op_type == "Transpose":
            inner = self.resolve(node.input[0], depth + 1)
            if inner is None:
                return None
            perm = _int_list_attr(node, "perm")
            arr = np.transpose(inner[0], perm if perm else None)
            swapped = arr.ndim == 2 and (not perm or perm == [1, 0])
            return arr, inner[1] if swapped else None, (not inner[2]) if swapped else inner[2]
        if node.op_type == "DequantizeLinear":
            q = self.resolve(node.input[0], depth + 1)
            scale = self.resolve(node.input[1], depth + 1)
            if q is None or scale is None:
                return None
            zero = self.resolve(node.input[2], depth + 1) if len(node.input) > 2 else None
            axis = _int_attr(node, "axis", 1)
            return _dequantize(q[0], scale[0], None if zero is None else zero[0], axis), None, False
        return None

    def integer_op_scale(self, node: onnx.NodeProto) -> np.ndarray | None:
        """Weight scale of a ConvInteger/MatMulInteger: Cast -> Mul(out, Mul(x_scale, w_scale))."""
        for cast in self.consumers.get(node.output[0], []):
            if cast.op_type != "Cast":
                continue
            for mul in self.consumers.get(cast.output[0], []):
                if mul.op_type != "Mul":
                    continue
                other = [i for i in mul.input if i != cast.output[0]]
                scale_node = self.producer.get(other[0]) if other else None
                if scale_node is None or scale_node.op_type != "Mul":
                    continue
                for inp in scale_node.input:
                    found = self.resolve(inp)
                    if found is not None:
                        return found[0].astype(np.float64)
        return None


def _int_attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(attr.i)
    return default


def _int_list_attr(node: onnx.NodeProto, name: str) -> list[int]:
    for attr in node.attribute:
        if attr.name == name:
            return [int(v) for v in attr.ints]
    return []


def _sparse_to_dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dims = tuple(int(d) for d in sparse.dims)
    dense = np.zeros(int(np.prod(dims)), dtype=values.dtype)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), dims)
    dense[indices.reshape(-1)] = values.reshape(-1)
    return dense.reshape(dims)


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> FloatArray:
    values = q.astype(np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    zp = np.zeros_like(scale) if zero is None else np.asarray(zero, dtype=np.float64)
    if scale.ndim == 1 and scale.size > 1 and values.ndim > 1:
        shape = [1] * values.ndim
        shape[axis % values.ndim] = scale.size
        scale = scale.reshape(shape)
        zp = zp.reshape(shape)
    result: FloatArray = (values - zp) * scale
    return result


def _layer_weight(consts: _Constants, node: onnx.NodeProto) -> tuple[FloatArray, str | None, bool]:
    """Canonical float64 weight of a conv/dense node, or raise _NotALayer."""
    op = node.op_type
    inputs = list(node.input)
    if op in ("Conv", "FusedConv"):
        found = consts.resolve(inputs[1]) if len(inputs) > 1 else None
        if found is None or found[0].ndim != 4:
            raise _NotALayer
        return found[0].astype(np.float64), found[1], False
    if op == "QLinearConv" or op == "QLinearMatMul":
        q = consts.resolve(inputs[3]) if len(inputs) > 5 else None
        scale = consts.resolve(inputs[4]) if q is not None else None
        zero = consts.resolve(inputs[5]) if q is not None else None
        if q is None or scale is None:
            raise _NotALayer
        axis = 0 if op == "QLinearConv" else 1
        w = _dequantize(q[0], scale[0], None if zero is None else zero[0], axis)
        if op == "QLinearConv":
            if w.ndim != 4:
                raise _NotALayer
            return w, None, False
        if w.ndim != 2:
            raise _NotALayer
        return w.T, None, True
    if op == "QGemm":  # com.microsoft: A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp
        q = consts.resolve(inputs[3]) if len(inputs) > 4 else None
        scale = consts.resolve(inputs[4]) if q is not None else None
        if q is None or scale is None or q[0].ndim != 2 or consts.resolve(inputs[0]) is not None:
            raise _NotALayer
        zero = consts.resolve(inputs[5]) if len(inputs) > 5 and inputs[5] else None
        trans_b = _int_attr(node, "transB", 0) == 1
        w = _dequantize(q[0], scale[0], None if zero is None else zero[0], 0 if trans_b else 1)
        return (w, None, False) if trans_b else (w.T, None, True)
    if op in ("ConvInteger", "MatMulInteger"):
        q = consts.resolve(inputs[1]) if len(inputs) > 1 else None
        if q is None:
            raise _NotALayer
        wzero = consts.resolve(inputs[3]) if len(inputs) > 3 else None
        wscale = consts.integer_op_scale(node)
        axis = 0 if op == "ConvInteger" else 1
        w = _dequantize(
            q[0],
            np.ones(1) if wscale is None else wscale,
            None if wzero is None else wzero[0],
            axis,
        )
        if op == "ConvInteger":
            if w.ndim != 4:
                raise _NotALayer
            return w, None, False
        if w.ndim != 2:
            raise _NotALayer
        return w.T, None, True
    if op in ("Gemm", "FusedGemm"):
        found = consts.resolve(inputs[1]) if len(inputs) > 1 else None
        if found is None or found[0].ndim != 2 or consts.resolve(inputs[0]) is not None:
            raise _NotALayer
        arr, init, transposed = found
        if _int_attr(node, "transB", 0) == 1:
            return arr.astype(np.float64), init, transposed
        return arr.astype(np.float64).T, init, not transposed
    if op == "MatMul":
        found = consts.resolve(inputs[1]) if len(inputs) > 1 else None
        if found is None or found[0].ndim != 2 or consts.resolve(inputs[0]) is not None:
            raise _NotALayer
        arr, init, transposed = found
        return arr.astype(np.float64).T, init, not transposed
    raise _NotALayer


class _NotALayer(Exception):
    pass


def weight_layers(model: onnx.ModelProto) -> list[LocatedLayer]:
    """Every weight-bearing conv/dense layer of the main graph, in topological order."""
    consts = _Constants(model.graph)
    layers: list[LocatedLayer] = []
    for index, node in enumerate(model.graph.node):
        if node.op_type in _CONV_OPS:
            kind = "conv"
        elif node.op_type in _DENSE_OPS:
            kind = "dense"
        else:
            continue
        try:
            weight, init, transposed = _layer_weight(consts, node)
        except _NotALayer:
            continue
        layers.append(
            LocatedLayer(
                kind=kind,
                op_type=node.op_type,
                node_name=node.name or f"#{index}",
                weight=weight,
                initializer=init,
                transposed=transposed,
            )
        )
    return layers


def locate(model: onnx.ModelProto, locator: LayerLocator) -> LocatedLayer:
    """The layer ``locator`` names, or raise :class:`WatermarkError` if the graph lacks it."""
    matches = [
        layer
        for layer in weight_layers(model)
        if layer.kind == locator.kind and layer.weight.shape == locator.weight_shape
    ]
    if len(matches) <= locator.occurrence:
        raise WatermarkError(
            f"model has no {locator.describe()} (found {len(matches)} such layer(s))"
        )
    return matches[locator.occurrence]
