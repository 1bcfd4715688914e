"""A small ONNX -> torch converter, so a released ONNX model can be fine-tuned and written back.

:class:`OnnxModule` interprets the graph with torch ops; every float initializer becomes a
trainable parameter, everything else a constant. :func:`write_back` copies the trained values
into the ORIGINAL graph's initializers, leaving the graph otherwise unchanged. Supported ops:
Gemm, MatMul, Add, Sub, Mul, Div, Relu, Conv, Flatten, MaxPool, AveragePool, GlobalAveragePool,
Reshape, Sigmoid, Tanh, Softmax, LogSoftmax, Identity, Dropout, Constant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from veil.sdk.errors import WatermarkError

__all__ = ["OnnxModule", "write_back"]

_SUPPORTED = {
    "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Conv", "Flatten", "MaxPool",
    "AveragePool", "GlobalAveragePool", "Reshape", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
    "Identity", "Dropout", "Constant",
}  # fmt: skip


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads_2d(pads: list[int]) -> tuple[int, int, int, int]:
    top, left, bottom, right = [*pads, 0, 0, 0, 0][:4]
    return int(top), int(left), int(bottom), int(right)


def _pad_input(x: torch.Tensor, pads: list[int], value: float) -> tuple[torch.Tensor, int, int]:
    """Apply asymmetric ONNX pads; return (x, symmetric pad h, symmetric pad w)."""
    if not pads:
        return x, 0, 0
    top, left, bottom, right = _pads_2d(pads)
    if top == bottom and left == right:
        return x, top, left
    return F.pad(x, (left, right, top, bottom), value=value), 0, 0


class OnnxModule(torch.nn.Module):
    """Runs an ONNX graph (single input, first output) with torch ops."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        unsupported = sorted({n.op_type for n in graph.node} - _SUPPORTED)
        if unsupported:
            raise WatermarkError(f"cannot fine-tune a graph with ops {unsupported}")
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                raise WatermarkError(f"cannot fine-tune op {node.domain}.{node.op_type}")
        self.params = torch.nn.ParameterDict()
        self.param_key: dict[str, str] = {}
        self.constants: dict[str, torch.Tensor] = {}
        for index, init in enumerate(graph.initializer):
            array = numpy_helper.to_array(init)
            if array.dtype.kind == "f":
                key = f"p{index}"
                self.params[key] = torch.nn.Parameter(torch.from_numpy(array.astype(np.float32)))
                self.param_key[init.name] = key
            else:
                self.constants[init.name] = torch.from_numpy(np.array(array))
        for node in graph.node:
            if node.op_type == "Constant":
                value = _attrs(node).get("value")
                if value is None:
                    raise WatermarkError("only Constant nodes with a tensor value are supported")
                self.constants[node.output[0]] = torch.from_numpy(
                    np.array(numpy_helper.to_array(value))
                )
        init_names = {i.name for i in graph.initializer}
        inputs = [i.name for i in graph.input if i.name not in init_names]
        if len(inputs) != 1:
            raise WatermarkError(f"expected a model with one data input, found {len(inputs)}")
        self.input_name = inputs[0]
        self.output_name = graph.output[0].name
        self.nodes = [
            (n.op_type, list(n.input), list(n.output), _attrs(n))
            for n in graph.node
            if n.op_type != "Constant"
        ]
        producer = {out: n.op_type for n in graph.node for out in n.output}
        self.outputs_probabilities = producer.get(self.output_name) == "Softmax"
        self.outputs_log_probabilities = producer.get(self.output_name) == "LogSoftmax"

    def parameter_for(self, initializer: str) -> torch.nn.Parameter:
        try:
            param: torch.nn.Parameter = self.params[self.param_key[initializer]]
            return param
        except KeyError as exc:
            raise WatermarkError(f"initializer {initializer!r} is not a float parameter") from exc

    def _tensor(self, env: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        if name in env:
            return env[name]
        if name in self.param_key:
            param: torch.Tensor = self.params[self.param_key[name]]
            return param
        if name in self.constants:
            return self.constants[name]
        raise WatermarkError(f"tensor {name!r} is not produced by the graph")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {self.input_name: x}
        for op, inputs, outputs, attrs in self.nodes:
            args = [self._tensor(env, name) if name else None for name in inputs]
            env[outputs[0]] = _OPS[op](args, attrs, self.training)
        return env[self.output_name]

    def logits_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy whatever the head returns (logits, probabilities or log-probabilities)."""
        if self.outputs_probabilities:
            return F.nll_loss(torch.log(out.clamp_min(1e-12)), target)
        if self.outputs_log_probabilities:
            return F.nll_loss(out, target)
        return F.cross_entropy(out, target)


Args = list[torch.Tensor | None]


def _req(args: Args, i: int) -> torch.Tensor:
    t = args[i] if i < len(args) else None
    if t is None:
        raise WatermarkError(f"operator input {i} is missing")
    return t


def _gemm(args: Args, attrs: dict[str, Any], _: bool) -> torch.Tensor:
    a, b = _req(args, 0), _req(args, 1)
    if attrs.get("transA", 0):
        a = a.t()
    if attrs.get("transB", 0):
        b = b.t()
    out = float(attrs.get("alpha", 1.0)) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        out = out + float(attrs.get("beta", 1.0)) * args[2]
    return out


def _conv(args: Args, attrs: dict[str, Any], _: bool) -> torch.Tensor:
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise WatermarkError("Conv auto_pad is not supported; export with explicit pads")
    x, w = _req(args, 0), _req(args, 1)
    bias = args[2] if len(args) > 2 else None
    x, ph, pw = _pad_input(x, list(attrs.get("pads", [])), 0.0)
    return F.conv2d(
        x,
        w,
        bias,
        stride=tuple(attrs.get("strides", [1, 1])),
        padding=(ph, pw),
        dilation=tuple(attrs.get("dilations", [1, 1])),
        groups=int(attrs.get("group", 1)),
    )


def _max_pool(args: Args, attrs: dict[str, Any], _: bool) -> torch.Tensor:
    x, ph, pw = _pad_input(_req(args, 0), list(attrs.get("pads", [])), float("-inf"))
    kernel = tuple(attrs["kernel_shape"])
    return F.max_pool2d(
        x,
        kernel,
        stride=tuple(attrs.get("strides", kernel)),
        padding=(ph, pw),
        ceil_mode=bool(attrs.get("ceil_mode", 0)),
    )


def _avg_pool(args: Args, attrs: dict[str, Any], _: bool) -> torch.Tensor:
    x, ph, pw = _pad_input(_req(args, 0), list(attrs.get("pads", [])), 0.0)
    kernel = tuple(attrs["kernel_shape"])
    return F.avg_pool2d(
        x,
        kernel,
        stride=tuple(attrs.get("strides", kernel)),
        padding=(ph, pw),
        ceil_mode=bool(attrs.get("ceil_mode", 0)),
        count_include_pad=bool(attrs.get("count_include_pad", 0)),
    )


def _flatten(args: Args, attrs: dict[str, Any], _: bool) -> torch.Tensor:
    x = _req(args, 0)
    axis = int(attrs.get("axis", 1)) % max(x.dim(), 1)
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return x.reshape(lead, -1)


def _reshape(args: Args, attrs: dict[str, Any], _: bool) -> torch.Tensor:
    x, shape_t = _req(args, 0), _req(args, 1)
    shape = [int(s) for s in shape_t.tolist()]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(args: Args, attrs: dict[str, Any], _: bool) -> torch.Tensor:
        return fn(_req(args, 0))

    return run


def _binary(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[..., torch.Tensor]:
    def run(args: Args, attrs: dict[str, Any], _: bool) -> torch.Tensor:
        return fn(_req(args, 0), _req(args, 1))

    return run


_OPS: dict[str, Callable[[Args, dict[str, Any], bool], torch.Tensor]] = {
    "Gemm": _gemm,
    "MatMul": _binary(torch.matmul),
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _binary(torch.div),
    "Relu": _unary(torch.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Identity": _unary(lambda t: t),
    "Dropout": _unary(lambda t: t),
    "Conv": _conv,
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "GlobalAveragePool": _unary(lambda t: t.mean(dim=(2, 3), keepdim=True)),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Softmax": lambda a, at, _: torch.softmax(_req(a, 0), dim=int(at.get("axis", -1))),
    "LogSoftmax": lambda a, at, _: torch.log_softmax(_req(a, 0), dim=int(at.get("axis", -1))),
}


def write_back(model: onnx.ModelProto, module: OnnxModule) -> onnx.ModelProto:
    """A copy of ``model`` whose float initializers hold ``module``'s current parameter values."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        key = module.param_key.get(init.name)
        if key is None:
            continue
        original_dtype = numpy_helper.to_array(init).dtype
        values = module.params[key].detach().cpu().numpy().astype(original_dtype)
        init.CopyFrom(numpy_helper.from_array(values, init.name))
    return out
