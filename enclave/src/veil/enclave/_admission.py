"""Admission of uploaded ONNX models: nothing that reads files, recurses or loops unboundedly.

``validate_onnx`` runs before a model is stored. It refuses, with ``InvalidInput``
(INVALID_ARGUMENT):

- external data anywhere: graph initializers and sparse initializers, and every attribute kind
  (``t``, ``tensors``, ``sparse_tensor``, ``sparse_tensors``) of every node of every subgraph
  (``g``, ``graphs``) at every nesting level. ONNX Runtime resolves a relative ``location``
  against its working directory when a model is loaded from bytes, so one such tensor reads a
  file of the server's disk;
- ``training_info``: the enclave serves inference only, nothing it runs needs it, and it holds
  whole graphs (initialization and algorithm) with tensors of their own; refusing it outright
  removes that surface instead of trusting a second walk to keep up with the format;
- local functions (their bodies are graphs too);
- graphs nested deeper than ``limits.max_graph_depth`` or with more than ``limits.max_graph_nodes``
  nodes in all (the walk is iterative, so a hostile model cannot exhaust the stack);
- a ``Loop`` whose trip count is a constant (an initializer or a ``Constant`` output, in its own
  graph or an enclosing one) above ``limits.max_loop_trip_count``. A trip count that comes from
  an input, or is computed, is bounded at run time by the inference wall clock, and so is a
  ``Scan`` (it iterates over its inputs, whose size the request's message limit bounds).
- string tensors, and every op or attribute that makes them from numbers (``Cast`` to string,
  ``*_string(s)`` attributes such as ``Constant.value_strings`` or ``LabelEncoder``'s, the
  ``String*``/``Regex*`` ops): ONNX Runtime keeps string characters on the heap, outside the
  capped arena of ``veil.enclave._onnx``, so a doubling ``StringConcat`` grew the process by 2 GiB
  under a 256 MiB limit. Inputs and outputs are numeric anyway (``spec_of``).

ONNX Runtime 1.32 has no session option that forbids reading external data (its config keys were
checked), so the same external-data walk runs again whenever the engine loads a stored model
(``check_self_contained``), which also covers models stored before this check existed.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from veil.enclave._errors import InvalidInput, TooLarge
from veil.enclave._limits import Limits

__all__ = [
    "TensorSpec",
    "ValidatedModel",
    "check_self_contained",
    "session_options",
    "short",
    "spec_of",
    "validate_onnx",
]

_ORT_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}
# Optimizers that would materialise tensors while the session is built, outside the memory
# ceiling of ``InferenceEngine`` (constant folding allocates up to 1 GiB per folded node).
DISABLED_OPTIMIZERS = ("ConstantFolding",)
_STRING = onnx.TensorProto.STRING
_STRING_OPS = frozenset({"StringConcat", "StringSplit", "StringNormalizer", "RegexFullMatch"})


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension


@dataclass(frozen=True)
class ValidatedModel:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opsets: Mapping[str, int]


def short(name: str, limit: int = 40) -> str:
    """``name`` quoted, cut to ``limit`` characters: messages stay small whatever a model holds."""
    return repr(name if len(name) <= limit else name[: limit - 1] + "…")


def spec_of(arg: ort.NodeArg) -> TensorSpec:
    dtype = _ORT_TO_NUMPY.get(arg.type)
    if dtype is None:
        raise InvalidInput(f"model tensor {short(arg.name)} has unsupported type {arg.type[:40]}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)


def session_options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.load_model_format", "ONNX")
    return opts


def _first_line(exc: BaseException, default: str) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else default


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _refuse_external(tensor: onnx.TensorProto) -> None:
    if _is_external(tensor):
        raise InvalidInput(
            f"ONNX tensor {short(tensor.name)} references external data; upload a "
            "self-contained model"
        )


def _refuse_strings(node: onnx.NodeProto) -> None:
    """Refuse every way a graph with numeric inputs can make a string tensor.

    ONNX Runtime keeps a string tensor's characters on the heap, outside the capped arena
    (which sees 32 bytes per element), so string ops would escape the memory ceiling.
    String tensors themselves are refused with the other tensors (``_check_tensor``).
    """
    op = node.op_type
    if op in _STRING_OPS:
        raise InvalidInput(f"ONNX operator {short(op)} is not accepted (no string tensors)")
    for attr in node.attribute:
        makes_string = (op == "Cast" and attr.name == "to" and attr.i == _STRING) or (
            attr.type in (onnx.AttributeProto.STRING, onnx.AttributeProto.STRINGS)
            and (attr.name.endswith(("_string", "_strings")))
        )
        if makes_string:
            raise InvalidInput(f"ONNX node {short(node.name)} makes string tensors; not accepted")


def _check_tensor(tensor: onnx.TensorProto) -> None:
    _refuse_external(tensor)
    if tensor.data_type == _STRING:
        raise InvalidInput(f"ONNX tensor {short(tensor.name)} holds strings; not accepted")


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices


def _attribute_tensors(attr: onnx.AttributeProto) -> Iterator[onnx.TensorProto]:
    if attr.HasField("t"):
        yield attr.t
    yield from attr.tensors
    sparse = list(attr.sparse_tensors)
    if attr.HasField("sparse_tensor"):
        sparse.append(attr.sparse_tensor)
    for s in sparse:
        yield s.values
        yield s.indices


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _scalar_int(tensor: onnx.TensorProto) -> int | None:
    """The value of a one-element integer tensor (a trip count), else None.

    Decoded by hand: a malformed tensor is left for the checker to refuse, never raises here.
    """
    widths: dict[int, int] = {onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4}
    width = widths.get(tensor.data_type)
    count = 1
    for d in tensor.dims:
        count *= d
    if width is None or count != 1 or _is_external(tensor):
        return None
    if tensor.HasField("raw_data"):
        if len(tensor.raw_data) != width:
            return None
        return int.from_bytes(tensor.raw_data, "little", signed=True)
    values = tensor.int64_data if width == 8 else tensor.int32_data
    return int(values[0]) if len(values) == 1 else None


def _constants(graph: onnx.GraphProto) -> dict[str, int]:
    """Names in ``graph`` bound to a one-element integer constant, with their values."""
    found: dict[str, int] = {}
    for init in graph.initializer:
        value = _scalar_int(init)
        if value is not None:
            found[init.name] = value
    for node in graph.node:
        if node.op_type != "Constant" or (node.domain or "ai.onnx") != "ai.onnx":
            continue
        if len(node.output) != 1:
            continue
        for attr in node.attribute:
            value = None
            if attr.name == "value" and attr.HasField("t"):
                value = _scalar_int(attr.t)
            elif attr.name == "value_int":
                value = attr.i
            elif attr.name == "value_ints" and len(attr.ints) == 1:
                value = attr.ints[0]
            if value is not None:
                found[node.output[0]] = value
    return found


def _refuse_containers(model: onnx.ModelProto) -> None:
    if model.functions:
        raise InvalidInput("ONNX models with local functions are not accepted")
    if len(model.training_info) > 0:
        raise InvalidInput("ONNX models with training_info are not accepted")


def _walk(model: onnx.ModelProto, limits: Limits | None) -> Iterator[onnx.NodeProto]:
    """Every node of every graph, tensors checked on the way; bounds enforced when ``limits``.

    Iterative (an explicit stack), so nesting depth costs no Python recursion.
    """
    _refuse_containers(model)
    check = _refuse_external if limits is None else _check_tensor
    root_scope: ChainMap[str, int] = ChainMap()
    stack: list[tuple[onnx.GraphProto, int, ChainMap[str, int]]] = [(model.graph, 1, root_scope)]
    nodes = 0
    while stack:
        graph, depth, outer = stack.pop()
        if limits is not None and depth > limits.max_graph_depth:
            raise InvalidInput(
                f"ONNX graphs are nested deeper than the limit of {limits.max_graph_depth}"
            )
        nodes += len(graph.node)
        if limits is not None and nodes > limits.max_graph_nodes:
            raise InvalidInput(f"ONNX model has more than {limits.max_graph_nodes} nodes")
        for tensor in _graph_tensors(graph):
            check(tensor)
        scope = outer.new_child(_constants(graph)) if limits is not None else outer
        for node in graph.node:
            for attr in node.attribute:
                for tensor in _attribute_tensors(attr):
                    check(tensor)
            if limits is not None:
                _refuse_strings(node)
            if limits is not None and node.op_type == "Loop" and node.input and node.input[0]:
                trips = scope.get(node.input[0])
                if trips is not None and trips > limits.max_loop_trip_count:
                    raise InvalidInput(
                        f"ONNX Loop runs {trips} times, limit is {limits.max_loop_trip_count}"
                    )
            for sub in _subgraphs(node):
                stack.append((sub, depth + 1, scope))
            yield node


def check_self_contained(data: bytes) -> None:
    """Raise ``InvalidInput`` if the model holds external data, functions or training_info."""
    for _ in _walk(_parse(data), None):
        pass


def _parse(data: bytes) -> onnx.ModelProto:
    try:
        return onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidInput("upload is not a valid ONNX model (protobuf did not parse)") from exc


def validate_onnx(
    data: bytes,
    *,
    max_bytes: int,
    allowed_domains: Sequence[str],
    limits: Limits,
) -> ValidatedModel:
    """Check an uploaded model before it is stored; raise ``InvalidInput`` or ``TooLarge``."""
    if len(data) > max_bytes:
        raise TooLarge(f"model is {len(data)} bytes, limit is {max_bytes}")
    model = _parse(data)
    if not model.graph.node:
        raise InvalidInput("ONNX model has an empty graph")
    _refuse_containers(model)
    allowed = {("ai.onnx" if d == "" else d) for d in allowed_domains}
    max_opset = onnx.defs.onnx_opset_version()
    opsets: dict[str, int] = {}
    for imp in model.opset_import:
        domain = imp.domain or "ai.onnx"
        if domain not in allowed:
            raise InvalidInput(f"ONNX operator domain {short(domain)} is not allowed")
        if domain == "ai.onnx" and not 7 <= imp.version <= max_opset:
            raise InvalidInput(f"ONNX opset {imp.version} is outside the supported 7..{max_opset}")
        opsets[domain] = imp.version
    for node in _walk(model, limits):
        if (node.domain or "ai.onnx") not in allowed:
            raise InvalidInput(f"ONNX node {short(node.name)} uses domain {short(node.domain)}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise InvalidInput(
            f"ONNX checker rejected the model: {_first_line(exc, 'invalid')}"
        ) from exc
    try:
        session = ort.InferenceSession(
            data,
            sess_options=session_options(),
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(DISABLED_OPTIMIZERS),
        )
    except Exception as exc:  # ORT raises its own untyped errors for hostile graphs
        raise InvalidInput(
            f"ONNX Runtime could not load the model: {_first_line(exc, 'load failed')}"
        ) from exc
    return ValidatedModel(
        inputs=tuple(spec_of(a) for a in session.get_inputs()),
        outputs=tuple(spec_of(a) for a in session.get_outputs()),
        opsets=opsets,
    )
