"""ONNX models inside the enclave: validation of uploads and ONNX Runtime sessions for inference."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from enclave._errors import InvalidInput, TooLarge

__all__ = [
    "InferenceEngine",
    "TensorSpec",
    "ValidatedModel",
    "available_providers",
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


def available_providers(preferred: Sequence[str]) -> list[str]:
    """Preferred providers that this ONNX Runtime build offers, in order (CPU always last)."""
    have = set(ort.get_available_providers())
    chosen = [p for p in preferred if p in have]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _nodes(attr.g)
            for sub in attr.graphs:
                yield from _nodes(sub)


def _spec(arg: ort.NodeArg) -> TensorSpec:
    dtype = _ORT_TO_NUMPY.get(arg.type)
    if dtype is None:
        raise InvalidInput(f"model tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(name=arg.name, dtype=dtype, shape=shape)


def _session_options() -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.load_model_format", "ONNX")
    return opts


def validate_onnx(data: bytes, *, max_bytes: int, allowed_domains: Sequence[str]) -> ValidatedModel:
    """Check an uploaded model before it is stored; raise ``InvalidInput`` or ``TooLarge``."""
    if len(data) > max_bytes:
        raise TooLarge(f"model is {len(data)} bytes, limit is {max_bytes}")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidInput("upload is not a valid ONNX model (protobuf did not parse)") from exc
    if not model.graph.node:
        raise InvalidInput("ONNX model has an empty graph")
    for tensor in _tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise InvalidInput(
                f"ONNX tensor {tensor.name!r} references external data; upload a "
                "self-contained model"
            )
    allowed = {("ai.onnx" if d == "" else d) for d in allowed_domains}
    max_opset = onnx.defs.onnx_opset_version()
    opsets: dict[str, int] = {}
    for imp in model.opset_import:
        domain = imp.domain or "ai.onnx"
        if domain not in allowed:
            raise InvalidInput(f"ONNX operator domain {domain!r} is not allowed")
        if domain == "ai.onnx" and not 7 <= imp.version <= max_opset:
            raise InvalidInput(f"ONNX opset {imp.version} is outside the supported 7..{max_opset}")
        opsets[domain] = imp.version
    if model.functions:
        raise InvalidInput("ONNX models with local functions are not accepted")
    for node in _nodes(model.graph):
        if (node.domain or "ai.onnx") not in allowed:
            raise InvalidInput(f"ONNX node {node.name!r} uses domain {node.domain!r}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "invalid"
        raise InvalidInput(f"ONNX checker rejected the model: {first}") from exc
    try:
        session = ort.InferenceSession(
            data, sess_options=_session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own untyped errors for hostile graphs
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "load failed"
        raise InvalidInput(f"ONNX Runtime could not load the model: {first}") from exc
    return ValidatedModel(
        inputs=tuple(_spec(a) for a in session.get_inputs()),
        outputs=tuple(_spec(a) for a in session.get_outputs()),
        opsets=opsets,
    )


class InferenceEngine:
    """ONNX Runtime sessions per model, cached (LRU), with input checks against the signature."""

    def __init__(self, providers: Sequence[str], *, cache_size: int = 16) -> None:
        self.providers = available_providers(providers)
        self._cache: OrderedDict[str, ort.InferenceSession] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _session(self, key: str, load: Callable[[], bytes]) -> ort.InferenceSession:
        with self._lock:
            session = self._cache.get(key)
            if session is not None:
                self._cache.move_to_end(key)
                return session
        data = load()
        session = ort.InferenceSession(
            data, sess_options=_session_options(), providers=self.providers
        )
        with self._lock:
            self._cache[key] = session
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return session

    def evict(self, prefix: str) -> None:
        with self._lock:
            for key in [k for k in self._cache if k.startswith(prefix)]:
                del self._cache[key]

    def run(
        self,
        key: str,
        load: Callable[[], bytes],
        inputs: Mapping[str, npt.NDArray[np.generic]],
        output_names: Sequence[str] = (),
    ) -> dict[str, npt.NDArray[np.generic]]:
        """Run the model named ``key`` (loaded on first use) after checking the inputs."""
        session = self._session(key, load)
        specs = {a.name: _spec(a) for a in session.get_inputs()}
        missing = sorted(set(specs) - set(inputs))
        extra = sorted(set(inputs) - set(specs))
        if missing or extra:
            raise InvalidInput(
                f"model inputs are {sorted(specs)}; missing {missing}, unexpected {extra}"
            )
        for name, arr in inputs.items():
            spec = specs[name]
            if arr.dtype.name != spec.dtype:
                raise InvalidInput(
                    f"input {name!r} is {arr.dtype.name}, model expects {spec.dtype}"
                )
            if len(arr.shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, arr.shape, strict=True)
            ):
                want_shape = ["?" if d < 0 else d for d in spec.shape]
                raise InvalidInput(
                    f"input {name!r} has shape {list(arr.shape)}, model expects {want_shape}"
                )
        names = [o.name for o in session.get_outputs()]
        unknown = sorted(set(output_names) - set(names))
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; model outputs are {names}")
        wanted = list(output_names) or names
        try:
            results = session.run(wanted, dict(inputs))
        except Exception as exc:  # ORT's runtime errors are untyped
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "failed"
            raise InvalidInput(f"inference failed: {first}") from exc
        return {n: np.asarray(r) for n, r in zip(wanted, results, strict=True)}
