"""The hostile-model corpus: ONNX models a tenant could upload to attack the enclave.

Every entry says where it must be stopped and how: refused at upload with INVALID_ARGUMENT, or
refused at inference with DEADLINE_EXCEEDED ("timeout") or RESOURCE_EXHAUSTED ("memory-limit").
The external-data entries point at a planted file, by absolute and by relative path, so a
suite can also prove that the file's bytes never come back.

Built with ``onnx.helper`` only; nothing here talks to a server (see test_hostile_models.py and
the soak suite, which run the corpus against one).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from onnx import (
    GraphProto,
    ModelProto,
    NodeProto,
    SparseTensorProto,
    TensorProto,
    TrainingInfoProto,
    ValueInfoProto,
    helper,
    numpy_helper,
)

__all__ = [
    "PLANTED_SECRET",
    "Hostile",
    "allocation_bombs",
    "corpus",
    "external_data_models",
    "loop_bombs",
    "nesting_bombs",
    "string_bombs",
]

PLANTED_SECRET = b"VEIL-PLANTED-SECRET-0123456789ab"  # 32 bytes: 8 float32 / 4 float64 values
OPSET = 17
GB_12_8 = 1_600_000_000  # float64 elements: 12.8 GB

UPLOAD = "upload"
INFER = "infer"


@dataclass(frozen=True)
class Hostile:
    """One hostile model and what the enclave must answer."""

    name: str
    model: bytes
    refused_at: str  # UPLOAD or INFER
    code: str  # gRPC status name
    reason: str  # the machine-readable reason of the RemoteError
    detail: str  # how the message starts
    inputs: dict[str, npt.NDArray[np.generic]] = field(default_factory=dict)


def _info(name: str, dtype: int, shape: list[int]) -> ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(graph: GraphProto) -> ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    return model


def _external(name: str, location: str, dims: tuple[int, ...] = (8,)) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims))
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "32")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _sparse(location: str) -> SparseTensorProto:
    indices = numpy_helper.from_array(np.arange(8, dtype=np.int64), "idx")
    return helper.make_sparse_tensor(_external("values", location), indices, [8])


def _adds(source: str) -> list[NodeProto]:
    return [helper.make_node("Add", ["x", source], ["y"])]


def _graph(
    nodes: list[NodeProto],
    inits: list[TensorProto] | None = None,
    extra_inputs: list[ValueInfoProto] | None = None,
) -> GraphProto:
    """A graph ``x: float[8] (+ extra inputs) -> y: float[8]``."""
    inputs = [_info("x", TensorProto.FLOAT, [8]), *(extra_inputs or [])]
    outputs = [_info("y", TensorProto.FLOAT, [8])]
    return helper.make_graph(nodes, "g", inputs, outputs, inits or [])


def _branch(
    nodes: list[NodeProto], inits: list[TensorProto] | None = None, name: str = "b"
) -> GraphProto:
    """A subgraph with no inputs and one output ``c`` (outer-scope names are visible)."""
    return helper.make_graph(nodes, name, [], [_info("c", TensorProto.FLOAT, [8])], inits or [])


def _if(then: GraphProto) -> NodeProto:
    """``c = then() if cond else x``."""
    other = _branch([helper.make_node("Identity", ["x"], ["c"])], name="else")
    return helper.make_node("If", ["cond"], ["c"], then_branch=then, else_branch=other)


def _with_cond(nodes: list[NodeProto]) -> GraphProto:
    return _graph(nodes, extra_inputs=[_info("cond", TensorProto.BOOL, [])])


def _positions(location: str) -> dict[str, ModelProto]:
    """One model per place a tensor can hide, each tensor's data at ``location``."""
    ext = _external("W", location)
    const_t = helper.make_node("Constant", [], ["c"], value=_external("W", location))
    const_sparse = helper.make_node("Constant", [], ["c"], sparse_value=_sparse(location))
    identity = helper.make_node("Identity", ["x"], ["c"])
    tensors_attr = helper.make_node("Identity", ["x"], ["c"])
    tensors_attr.attribute.append(helper.make_attribute("payload", [ext]))
    sparse_list = helper.make_node("Identity", ["x"], ["c"])
    sparse_list.attribute.append(helper.make_attribute("payload", [_sparse(location)]))
    graphs_attr = helper.make_node("Identity", ["x"], ["c"])
    graphs_attr.attribute.append(
        helper.make_attribute(
            "bodies", [_branch([helper.make_node("Identity", ["W"], ["c"])], [ext])]
        )
    )
    inner_if = _if(_branch([helper.make_node("Identity", ["W"], ["c"])], [ext]))
    nested = _if(_branch([inner_if], name="middle"))
    loop_body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Constant", [], ["w"], value=_external("W", location)),
            helper.make_node("Add", ["v_in", "w"], ["v_out"]),
        ],
        "body",
        [
            _info("i", TensorProto.INT64, []),
            _info("cond_in", TensorProto.BOOL, []),
            _info("v_in", TensorProto.FLOAT, [8]),
        ],
        [_info("cond_out", TensorProto.BOOL, []), _info("v_out", TensorProto.FLOAT, [8])],
    )
    loop = [
        helper.make_node("Constant", [], ["n"], value_int=1),
        helper.make_node(
            "Constant", [], ["t"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True])
        ),
        helper.make_node("Loop", ["n", "t", "x"], ["y"], body=loop_body),
    ]
    sparse_init = _graph(_adds("W"))
    sparse_init.sparse_initializer.append(_sparse(location))
    sparse_init.sparse_initializer[0].values.name = "W"
    training = _model(_graph([helper.make_node("Identity", ["x"], ["y"])]))
    info = TrainingInfoProto(initialization=_branch([identity], [ext], name="init"))
    training.training_info.append(info)
    function = helper.make_function(
        "local",
        "Reveal",
        ["x"],
        ["y"],
        [const_t, helper.make_node("Add", ["x", "c"], ["y"])],
        [helper.make_opsetid("", OPSET)],
    )
    with_function = helper.make_model(
        _graph([helper.make_node("Reveal", ["x"], ["y"], domain="local")]),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("local", 1)],
        functions=[function],
    )
    return {
        "initializer": _model(_graph(_adds("W"), [ext])),
        "sparse-initializer": _model(sparse_init),
        "attr-t": _model(_graph([const_t, *_adds_c()])),
        "attr-sparse-tensor": _model(_graph([const_sparse, *_adds_c()])),
        "attr-tensors": _model(_graph([tensors_attr, *_adds_c()])),
        "attr-sparse-tensors": _model(_graph([sparse_list, *_adds_c()])),
        "attr-g": _model(_with_cond([_if(_branch([const_sparse])), *_adds_c()])),
        "attr-graphs": _model(_graph([graphs_attr, *_adds_c()])),
        "nested-if": _model(_with_cond([nested, *_adds_c()])),
        "loop-body": _model(_graph(loop)),
        "training-info": training,
        "function": with_function,
    }


def _adds_c() -> list[NodeProto]:
    return [helper.make_node("Add", ["x", "c"], ["y"])]


def external_data_models(planted: Path, cwd: Path) -> list[Hostile]:
    """External data in every position, by absolute path and by path relative to ``cwd``."""
    found = []
    for kind, location in (("abs", str(planted)), ("rel", os.path.relpath(planted, cwd))):
        for position, model in _positions(location).items():
            detail = "ONNX tensor 'W' references external data"
            if position == "training-info":
                detail = "ONNX models with training_info are not accepted"
            elif position == "function":
                detail = "ONNX models with local functions are not accepted"
            elif position in {"attr-sparse-tensor", "attr-sparse-tensors", "attr-g"}:
                detail = "ONNX tensor 'values' references external data"
            found.append(
                Hostile(
                    name=f"external-{position}-{kind}",
                    model=model.SerializeToString(),
                    refused_at=UPLOAD,
                    code="INVALID_ARGUMENT",
                    reason="invalid-input",
                    detail=detail,
                )
            )
    return found


def _loop_model(
    trips: Callable[[], list[NodeProto]], from_input: bool, *, nest: bool = False
) -> ModelProto:
    """``y = x + M`` by a Loop adding 1 per iteration; ``M`` from ``trips`` or from input ``M``.

    Each iteration also tiles ``v`` to 64 Ki floats and adds 0 times their sum, so that even a
    trip count at the admission bound (10^6) takes far longer than the 1 s limit on any machine:
    the watchdog, not the speed of the machine, is what stops it.
    """
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Tile", ["v_in", "repeats"], ["wide"]),
            helper.make_node("ReduceSum", ["wide"], ["total"]),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["v_in", "one"], ["next"]),
            helper.make_node("Add", ["next", "nothing"], ["v_out"]),
        ],
        "body",
        [
            _info("i", TensorProto.INT64, []),
            _info("cond_in", TensorProto.BOOL, []),
            _info("v_in", TensorProto.FLOAT, [8]),
        ],
        [_info("cond_out", TensorProto.BOOL, []), _info("v_out", TensorProto.FLOAT, [8])],
        [
            numpy_helper.from_array(np.ones(8, np.float32), "one"),
            numpy_helper.from_array(np.zeros(1, np.float32), "zero"),
            numpy_helper.from_array(np.array([8192], np.int64), "repeats"),
        ],
    )
    nodes = [
        helper.make_node(
            "Constant", [], ["t"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True])
        ),
        helper.make_node("Loop", ["M", "t", "x"], ["y"], body=body),
    ]
    if nest:  # the Loop sits inside an If; its constant trip count is in the outer graph
        inner = helper.make_graph([nodes[1]], "then", [], [_info("y", TensorProto.FLOAT, [8])])
        other = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "else",
            [],
            [_info("y", TensorProto.FLOAT, [8])],
        )
        nodes = [
            nodes[0],
            helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=other),
        ]
    extra = [_info("M", TensorProto.INT64, [])] if from_input else []
    if nest:
        extra.append(_info("cond", TensorProto.BOOL, []))
    graph = _graph(trips() + nodes, extra_inputs=extra)
    return _model(graph)


def loop_bombs(max_trip_count: int, timeout_seconds: float) -> list[Hostile]:
    """Trip counts above the admission bound (refused) and from input or endless (timed out)."""
    over = max_trip_count + 1

    def initializer() -> list[NodeProto]:
        return []

    def constant(value: int) -> Callable[[], list[NodeProto]]:
        return lambda: [helper.make_node("Constant", [], ["M"], value_int=value)]

    def constant_tensor(value: int) -> Callable[[], list[NodeProto]]:
        return lambda: [
            helper.make_node(
                "Constant", [], ["M"], value=helper.make_tensor("M", TensorProto.INT64, [], [value])
            )
        ]

    as_init = _loop_model(initializer, False)
    as_init.graph.initializer.append(numpy_helper.from_array(np.array(over, np.int64), "M"))
    refused = f"ONNX Loop runs {over} times, limit is {max_trip_count}"
    timed_out = f"inference ran past its {timeout_seconds:g} s limit"
    x = np.zeros(8, np.float32)
    endless = _loop_model(initializer, False)
    endless.graph.node[1].input[0] = ""  # no trip count: runs while cond (always true)
    return [
        Hostile(
            "loop-const-initializer",
            as_init.SerializeToString(),
            UPLOAD,
            "INVALID_ARGUMENT",
            "invalid-input",
            refused,
        ),
        Hostile(
            "loop-const-node",
            _loop_model(constant(over), False).SerializeToString(),
            UPLOAD,
            "INVALID_ARGUMENT",
            "invalid-input",
            refused,
        ),
        Hostile(
            "loop-const-tensor-2^62",
            _loop_model(constant_tensor(2**62), False).SerializeToString(),
            UPLOAD,
            "INVALID_ARGUMENT",
            "invalid-input",
            f"ONNX Loop runs {2**62} times",
        ),
        Hostile(
            "loop-const-outer-scope",
            _loop_model(constant(over), False, nest=True).SerializeToString(),
            UPLOAD,
            "INVALID_ARGUMENT",
            "invalid-input",
            refused,
        ),
        Hostile(
            "loop-input-2^62",
            _loop_model(initializer, True).SerializeToString(),
            INFER,
            "DEADLINE_EXCEEDED",
            "timeout",
            timed_out,
            {"x": x, "M": np.array(2**62, np.int64)},
        ),
        Hostile(
            "loop-const-at-bound",
            _loop_model(constant(max_trip_count), False).SerializeToString(),
            INFER,
            "DEADLINE_EXCEEDED",
            "timeout",
            timed_out,
            {"x": x},
        ),
        Hostile(
            "loop-endless",
            endless.SerializeToString(),
            INFER,
            "DEADLINE_EXCEEDED",
            "timeout",
            timed_out,
            {"x": x},
        ),
    ]


def _alloc_model(nodes: list[NodeProto], inputs: list[ValueInfoProto]) -> bytes:
    reduce = helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0)
    graph = helper.make_graph(
        [*nodes, reduce], "alloc", inputs, [_info("s", TensorProto.DOUBLE, [])]
    )
    return _model(graph).SerializeToString()


def allocation_bombs(memory_bytes: int) -> list[Hostile]:
    """Expand / ConstantOfShape / Tile / Range sized by the client: 12.8 GB and just past."""
    one = np.ones(1, np.float64)
    shape = _info("shape", TensorProto.INT64, [1])
    value = helper.make_tensor("v", TensorProto.DOUBLE, [1], [1.0])
    detail = f"inference needs more than its {memory_bytes} byte memory limit"
    just_past = memory_bytes // 8 + 1  # float64 elements: one element more than the limit
    half = memory_bytes // 16 + 1  # two of these together are past the limit

    def entry(name: str, model: bytes, inputs: dict[str, npt.NDArray[np.generic]]) -> Hostile:
        return Hostile(name, model, INFER, "RESOURCE_EXHAUSTED", "memory-limit", detail, inputs)

    expand = _alloc_model(
        [helper.make_node("Expand", ["x", "shape"], ["big"])],
        [_info("x", TensorProto.DOUBLE, [1]), shape],
    )
    fill = _alloc_model(
        [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=value)], [shape]
    )
    tile = _alloc_model(
        [helper.make_node("Tile", ["x", "shape"], ["big"])],
        [_info("x", TensorProto.DOUBLE, [1]), shape],
    )
    scalar = [_info(n, TensorProto.DOUBLE, []) for n in ("a", "b", "d")]
    span = _alloc_model([helper.make_node("Range", ["a", "b", "d"], ["big"])], scalar)
    pair = _alloc_model(
        [
            helper.make_node("Expand", ["x", "shape"], ["e1"]),
            helper.make_node("Neg", ["e1"], ["e2"]),
            helper.make_node("Concat", ["e1", "e2"], ["big"], axis=0),
        ],
        [_info("x", TensorProto.DOUBLE, [1]), shape],
    )
    zero, step = np.array(0.0), np.array(1.0)
    return [
        entry("expand-12.8GB", expand, {"x": one, "shape": np.array([GB_12_8], np.int64)}),
        entry("expand-just-past", expand, {"x": one, "shape": np.array([just_past], np.int64)}),
        entry("constant-of-shape-12.8GB", fill, {"shape": np.array([GB_12_8], np.int64)}),
        entry("tile-12.8GB", tile, {"x": one, "shape": np.array([GB_12_8], np.int64)}),
        entry("tile-just-past", tile, {"x": one, "shape": np.array([just_past], np.int64)}),
        entry("range-12.8GB", span, {"a": zero, "b": np.array(float(GB_12_8)), "d": step}),
        entry("two-halves", pair, {"x": one, "shape": np.array([half], np.int64)}),
    ]


def _nested_ifs(depth: int) -> ModelProto:
    """``depth`` graphs in all: the main graph and If inside If ... (depth - 1 Ifs).

    The protobuf runtime refuses to build (or parse) messages nested past 100 levels, about
    32 Ifs; ``_nested_bytes`` writes deeper ones by hand.
    """
    inner = _branch([helper.make_node("Identity", ["x"], ["c"])], name="leaf")
    for level in range(depth - 2):
        inner = _branch([_if(inner)], name=f"level{level}")
    return _model(_with_cond([_if(inner), *_adds_c()]))


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    key, size, out = (number << 3) | 2, len(payload), bytearray()
    for value in (key, size):
        while value > 0x7F:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + payload


def _nested_bytes(depth: int) -> bytes:
    """A ModelProto whose graphs nest ``depth`` deep (If -> then_branch -> If ...), by hand."""
    graph = b""
    for _ in range(depth - 1):
        attribute = _field(1, b"then_branch") + _field(6, graph) + bytes([0xA0, 0x01, 5])
        graph = _field(1, _field(4, b"If") + _field(5, attribute))  # node: op_type, attribute
    opset = bytes([0x10, OPSET])  # OperatorSetIdProto.version
    return bytes([0x08, 9]) + _field(7, graph) + _field(8, opset)  # ir_version, graph, opset


def nesting_bombs(max_depth: int, max_nodes: int) -> list[Hostile]:
    """Graphs nested past the depth bound, far past it, and more nodes than allowed."""
    deep = f"ONNX graphs are nested deeper than the limit of {max_depth}"
    many = f"ONNX model has more than {max_nodes} nodes"
    chain = [
        helper.make_node("Identity", ["x" if i == 0 else f"t{i}"], [f"t{i + 1}"])
        for i in range(max_nodes)
    ]
    wide = _model(_graph([*chain, helper.make_node("Identity", [f"t{max_nodes}"], ["y"])]))
    half = max_nodes // 2 + 1  # two branches of an If: neither alone is over, together they are
    branch = [
        helper.make_node("Identity", ["x" if i == 0 else f"b{i}"], [f"b{i + 1}"])
        for i in range(half)
    ]
    branch.append(helper.make_node("Identity", [f"b{half}"], ["c"]))
    split = helper.make_node(
        "If",
        ["cond"],
        ["c"],
        then_branch=_branch(branch, name="then"),
        else_branch=_branch(list(branch), name="else"),
    )
    spread = _model(_with_cond([split, *_adds_c()]))
    return [
        Hostile(
            "nesting-just-past",
            _nested_ifs(max_depth + 1).SerializeToString(),
            UPLOAD,
            "INVALID_ARGUMENT",
            "invalid-input",
            deep,
        ),
        Hostile(
            "nesting-30",
            _nested_ifs(30).SerializeToString(),
            UPLOAD,
            "INVALID_ARGUMENT",
            "invalid-input",
            deep,
        ),
        Hostile(
            "nesting-5000-raw",
            _nested_bytes(5000),
            UPLOAD,
            "INVALID_ARGUMENT",
            "invalid-input",
            "upload is not a valid ONNX model",
        ),
        Hostile(
            "nodes-flat",
            wide.SerializeToString(),
            UPLOAD,
            "INVALID_ARGUMENT",
            "invalid-input",
            many,
        ),
        Hostile(
            "nodes-spread-over-subgraphs",
            spread.SerializeToString(),
            UPLOAD,
            "INVALID_ARGUMENT",
            "invalid-input",
            many,
        ),
    ]


def string_bombs() -> list[Hostile]:
    """Strings grow on the heap, outside the arena: every way to make one is refused."""
    shape = _info("shape", TensorProto.INT64, [1])
    out = [_info("n", TensorProto.INT64, [])]
    cast = [
        helper.make_node(
            "ConstantOfShape",
            ["shape"],
            ["f"],
            value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]),
        ),
        helper.make_node("Cast", ["f"], ["s0"], to=TensorProto.STRING),
    ]
    doubling = [
        helper.make_node("StringConcat", [f"s{i}", f"s{i}"], [f"s{i + 1}"]) for i in range(30)
    ]
    tail = [
        helper.make_node("Shape", ["s30"], ["dims"]),
        helper.make_node("ReduceSum", ["dims"], ["n"], keepdims=0),
    ]

    def model(
        nodes: list[NodeProto], inits: list[TensorProto] | None = None, ml: bool = False
    ) -> bytes:
        graph = helper.make_graph(nodes, "strings", [shape], out, inits or [])
        opsets = [helper.make_opsetid("", 20)] + (
            [helper.make_opsetid("ai.onnx.ml", 4)] if ml else []
        )
        built = helper.make_model(graph, opset_imports=opsets)
        built.ir_version = 9
        return built.SerializeToString()

    long_text = TensorProto(
        name="s0", data_type=TensorProto.STRING, dims=[1], string_data=[b"A" * 4096]
    )
    expand = [helper.make_node("Expand", ["s0", "shape"], ["s30"]), *tail]
    constant = helper.make_node("Constant", [], ["s0"], value_strings=["A" * 4096])
    encoder = helper.make_node(
        "LabelEncoder",
        ["shape"],
        ["s0"],
        domain="ai.onnx.ml",
        keys_int64s=[1],
        values_strings=["A" * 4096],
        default_string="B" * 4096,
    )
    refused = ("INVALID_ARGUMENT", "invalid-input")
    return [
        Hostile(
            "string-concat-doubling",
            model([*cast, *doubling, *tail]),
            UPLOAD,
            *refused,
            "ONNX node '' makes string tensors",
        ),
        Hostile(
            "string-concat-only",
            model([*doubling, *tail]),
            UPLOAD,
            *refused,
            "ONNX operator 'StringConcat' is not accepted",
        ),
        Hostile(
            "string-initializer-expand",
            model(expand, [long_text]),
            UPLOAD,
            *refused,
            "ONNX tensor 's0' holds strings",
        ),
        Hostile(
            "string-constant-expand",
            model([constant, *expand]),
            UPLOAD,
            *refused,
            "ONNX node '' makes string tensors",
        ),
        Hostile(
            "string-label-encoder",
            model([encoder, *expand], ml=True),
            UPLOAD,
            *refused,
            "ONNX node '' makes string tensors",
        ),
    ]


def corpus(
    planted: Path,
    cwd: Path,
    *,
    max_trip_count: int,
    timeout_seconds: float,
    memory_bytes: int,
    max_depth: int,
    max_nodes: int,
) -> list[Hostile]:
    """The whole corpus, for the limits a server runs with."""
    return [
        *external_data_models(planted, cwd),
        *loop_bombs(max_trip_count, timeout_seconds),
        *allocation_bombs(memory_bytes),
        *nesting_bombs(max_depth, max_nodes),
        *string_bombs(),
    ]
