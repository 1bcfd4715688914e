"""Function-preserving rewrites of an ONNX model: what a thief who knows the scheme tries first.

Each takes a model and returns a new one computing the same function (up to float rounding),
with the units of one weight layer (``index``: its position among the Conv/Gemm nodes in graph
order) rewritten and the next weight layer compensated: permutation, per-unit scaling (positive
across ReLU/MaxPool; ``-1`` only across odd activations such as tanh with linear pooling),
a BatchNorm split off the layer or fused back into it, and a Gemm weight stored transposed.
Used by the tests and ``make bench-watermark`` to check that the rewrite-invariant reductions
(``unit_gram``, ``kernel_bag``) still verify. Only onnx and numpy.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from veil.sdk.errors import WatermarkError

__all__ = ["fuse_batchnorm", "permute_units", "scale_units", "split_batchnorm", "toggle_transpose"]

FloatArray = npt.NDArray[np.float64]
_LAYER_OPS = ("Conv", "Gemm")


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _layers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in _LAYER_OPS]


def _init(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    for init in model.graph.initializer:
        if init.name == name:
            return init
    raise WatermarkError(f"no initializer {name!r}")


def _get(model: onnx.ModelProto, name: str) -> FloatArray:
    return numpy_helper.to_array(_init(model, name)).astype(np.float64)


def _put(model: onnx.ModelProto, name: str, value: FloatArray) -> None:
    _init(model, name).CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _trans_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)


def _out_axis(node: onnx.NodeProto) -> int:
    """Axis of the stored weight that indexes output units."""
    return 0 if node.op_type == "Conv" or _trans_b(node) else 1


def _map_units(
    model: onnx.ModelProto,
    index: int,
    out_fn: object,
    in_fn: object,
) -> onnx.ModelProto:
    """Apply ``out_fn(w, axis)`` to layer ``index``'s weight and bias (output units) and
    ``in_fn(w, axis, block)`` to the next layer's weight (its input units, in blocks of
    ``block`` columns when a Flatten lies between a conv and a dense layer)."""
    out = _copy(model)
    layers = _layers(out)
    if index + 1 >= len(layers):
        raise WatermarkError(f"layer {index} has no next weight layer to compensate")
    node, nxt = layers[index], layers[index + 1]
    weight = _get(out, node.input[1])
    axis = _out_axis(node)
    units = weight.shape[axis]
    _put(out, node.input[1], out_fn(weight, axis))  # type: ignore[operator]
    if len(node.input) > 2 and node.input[2]:
        _put(out, node.input[2], out_fn(_get(out, node.input[2]), 0))  # type: ignore[operator]
    nxt_weight = _get(out, nxt.input[1])
    in_axis = 1 if nxt.op_type == "Conv" or _trans_b(nxt) else 0
    block = nxt_weight.shape[in_axis] // units
    if block * units != nxt_weight.shape[in_axis]:
        raise WatermarkError("the next layer's inputs do not split into the layer's units")
    _put(out, nxt.input[1], in_fn(nxt_weight, in_axis, block))  # type: ignore[operator]
    return out


def permute_units(model: onnx.ModelProto, index: int, rng: np.random.Generator) -> onnx.ModelProto:
    """Permute the output units of weight layer ``index`` (and the next layer's inputs)."""
    layers = _layers(model)
    node = layers[index]
    units = _get(model, node.input[1]).shape[_out_axis(node)]
    perm = rng.permutation(units)

    def out_fn(w: FloatArray, axis: int) -> FloatArray:
        return np.take(w, perm, axis=axis)

    def in_fn(w: FloatArray, axis: int, block: int) -> FloatArray:
        cols = (perm[:, None] * block + np.arange(block)[None, :]).reshape(-1)
        return np.take(w, cols, axis=axis)

    return _map_units(model, index, out_fn, in_fn)


def scale_units(model: onnx.ModelProto, index: int, factors: FloatArray) -> onnx.ModelProto:
    """Multiply output unit ``i`` of layer ``index`` by ``factors[i]``, the next layer's
    matching inputs by ``1 / factors[i]`` (positive factors commute with ReLU and MaxPool;
    ``+-1`` with odd activations and average pooling)."""

    def shaped(values: FloatArray, ndim: int, axis: int) -> FloatArray:
        shape = [1] * ndim
        shape[axis] = len(values)
        return values.reshape(shape)

    def out_fn(w: FloatArray, axis: int) -> FloatArray:
        return w * shaped(factors, w.ndim, axis)

    def in_fn(w: FloatArray, axis: int, block: int) -> FloatArray:
        return w / shaped(np.repeat(factors, block), w.ndim, axis)

    return _map_units(model, index, out_fn, in_fn)


def split_batchnorm(
    model: onnx.ModelProto, index: int, rng: np.random.Generator
) -> onnx.ModelProto:
    """Rewrite layer ``index`` as layer' -> BatchNormalization with random statistics and
    signed gamma, such that the pair computes what the layer did (what fusing a BN undoes)."""
    out = _copy(model)
    node = _layers(out)[index]
    weight = _get(out, node.input[1])
    axis = _out_axis(node)
    n = weight.shape[axis]
    gamma = rng.choice([-1.0, 1.0], n) * np.exp(rng.uniform(-1, 1, n))
    beta, mean = rng.normal(size=n), rng.normal(size=n)
    var, eps = np.exp(rng.uniform(-1, 1, n)), 1e-5
    scale = gamma / np.sqrt(var + eps)
    shape = [1] * weight.ndim
    shape[axis] = n
    _put(out, node.input[1], weight / scale.reshape(shape))
    bias = _get(out, node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(n)
    bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else f"{node.name}_bn_bias"
    if bias_name not in {i.name for i in out.graph.initializer}:
        out.graph.initializer.append(numpy_helper.from_array(np.zeros(n, np.float32), bias_name))
        node.input.append(bias_name)
    _put(out, bias_name, (bias - beta) / scale + mean)
    result = node.output[0]
    node.output[0] = f"{result}_pre_bn"
    names = [f"{result}_bn_{part}" for part in ("scale", "bias", "mean", "var")]
    for name, value in zip(names, (gamma, beta, mean, var), strict=True):
        out.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    bn = helper.make_node("BatchNormalization", [node.output[0], *names], [result], epsilon=eps)
    position = list(out.graph.node).index(node)
    out.graph.node.insert(position + 1, bn)
    return out


def fuse_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold every BatchNormalization that directly follows a Conv/Gemm into its weights."""
    out = _copy(model)
    for bn in [n for n in out.graph.node if n.op_type == "BatchNormalization"]:
        producer = next((n for n in out.graph.node if bn.input[0] in n.output), None)
        if producer is None or producer.op_type not in _LAYER_OPS:
            continue
        gamma, beta, mean, var = (_get(out, name) for name in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        weight = _get(out, producer.input[1])
        axis = _out_axis(producer)
        shape = [1] * weight.ndim
        shape[axis] = len(scale)
        _put(out, producer.input[1], weight * scale.reshape(shape))
        _put(out, producer.input[2], (_get(out, producer.input[2]) - mean) * scale + beta)
        producer.output[0] = bn.output[0]
        out.graph.node.remove(bn)
        for name in bn.input[1:5]:
            out.graph.initializer.remove(_init(out, name))
    return out


def toggle_transpose(model: onnx.ModelProto, index: int) -> onnx.ModelProto:
    """Store Gemm layer ``index``'s weight transposed and flip its ``transB``."""
    out = _copy(model)
    node = _layers(out)[index]
    if node.op_type != "Gemm":
        raise WatermarkError(f"layer {index} is a {node.op_type}, not a Gemm")
    _put(out, node.input[1], _get(out, node.input[1]).T)
    flipped = 0 if _trans_b(node) else 1
    for attr in list(node.attribute):
        if attr.name == "transB":
            node.attribute.remove(attr)
    node.attribute.append(helper.make_attribute("transB", flipped))
    return out
