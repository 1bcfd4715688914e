"""``from_proto`` decodes (and refuses) exactly what it did before its per-call work was cut.

The reference is the previous implementation, verbatim; every tensor of a corpus of valid and
hostile ``Tensor`` messages must decode to the same array (dtype, shape, bytes, read-only) or
fail with the same error and message, with and without a byte limit.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.sdk.errors import ProtocolError
from veil.sdk.tensors import ALLOWED_DTYPES, MAX_RANK, from_proto, to_proto
from veil.v1 import common_pb2

_MAX_SPAN = 2**63 - 1


def ref_from_proto(
    tensor: common_pb2.Tensor, *, max_bytes: int | None = None
) -> npt.NDArray[np.generic]:
    if tensor.dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"unsupported tensor dtype {tensor.dtype[:32]!r}")
    rank = len(tensor.shape)
    if rank > MAX_RANK:
        raise ProtocolError(f"tensor has {rank} dimensions, at most {MAX_RANK} are allowed")
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise ProtocolError(f"tensor shape {list(shape)} has a negative dimension")
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    limit = _MAX_SPAN if max_bytes is None else min(max_bytes, _MAX_SPAN)
    span = math.prod(max(d, 1) for d in shape) * dtype.itemsize
    expected = math.prod(shape) * dtype.itemsize
    if expected > limit:
        raise ProtocolError(f"tensor of {expected} bytes exceeds the {limit}-byte limit")
    if span > limit:
        raise ProtocolError(
            f"empty tensor of shape {list(shape)} spans {span} bytes with its zero dimensions "
            f"counted as 1, over the {limit}-byte limit"
        )
    data = tensor.data
    if len(data) != expected:
        raise ProtocolError(
            f"tensor data is {len(data)} bytes, shape {list(shape)} of "
            f"{tensor.dtype} needs {expected}"
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def verdict(tensor: common_pb2.Tensor, decode: Any, max_bytes: int | None) -> tuple[Any, ...]:
    try:
        arr = decode(tensor, max_bytes=max_bytes)
    except Exception as exc:  # compared: both must raise the same
        return (type(exc).__name__, str(exc))
    return ("ok", arr.dtype.str, arr.dtype.isnative, arr.shape, arr.tobytes(), arr.flags.writeable)


def corpus() -> list[common_pb2.Tensor]:
    rng = random.Random(5)
    out = []
    for name in sorted(ALLOWED_DTYPES):
        for shape in ((), (0,), (3,), (2, 3), (1, 0, 4), (2, 1, 1, 2)):
            arr = np.arange(math.prod(shape), dtype=np.float64).astype(name).reshape(shape)
            good = to_proto(arr)
            out.append(good)
            size = len(good.data)
            for data in (good.data[:-1], good.data + b"\0", b"", b"\1" * (size + 8)):
                out.append(common_pb2.Tensor(dtype=name, shape=list(shape), data=data))
    for name in ("", "float", "object", "<f4", "float32 ", "Float32", "x" * 100, "f\u00e9", "str"):
        out.append(common_pb2.Tensor(dtype=name, shape=[1], data=b"\0" * 4))
    shapes: list[list[int]] = [
        [-1],
        [2, -3],
        [0, -1],
        [1] * MAX_RANK,
        [1] * (MAX_RANK + 1),
        [0] * (MAX_RANK + 1),
        [0, 2**62],
        [2**62, 0],
        [0, 2**40, 2**40],
        [2**62, 2],
        [2**31, 2**31],
        [2**63 - 1],
        [-(2**63)],
        [0, 2**61],
        [0, 2**60, 3],
        [4, 0, 4],
    ]
    for _ in range(60):
        shapes.append([rng.choice([0, 1, 2, 3, 7, 2**20, 2**33]) for _ in range(rng.randint(0, 5))])
    for shape, name in itertools.product(shapes, ("float32", "int8", "float64")):
        n = math.prod(shape) * np.dtype(name).itemsize if min(shape, default=0) >= 0 else 4
        data = b"\0" * n if 0 <= n <= 1 << 16 else b"\0" * 8
        out.append(common_pb2.Tensor(dtype=name, shape=shape, data=data))
    return out


def test_from_proto_agrees_with_the_previous_implementation() -> None:
    tensors = corpus()
    outcomes = {"ok": 0, "ProtocolError": 0}
    for tensor in tensors:
        for max_bytes in (None, 0, 16, 2**16, 2**62, 2**80):
            want = verdict(tensor, ref_from_proto, max_bytes)
            got = verdict(tensor, from_proto, max_bytes)
            assert got == want, (tensor.dtype, list(tensor.shape), len(tensor.data), max_bytes)
            outcomes[want[0]] = outcomes.get(want[0], 0) + 1
    assert set(outcomes) == {"ok", "ProtocolError"}, outcomes
    assert outcomes["ok"] > 100 and outcomes["ProtocolError"] > 500, outcomes


def test_decoded_tensor_is_a_native_read_only_view() -> None:
    arr = np.arange(6, dtype=">i4").reshape(2, 3)  # big-endian in, little-endian on the wire
    out = from_proto(to_proto(arr))
    assert out.dtype.isnative and out.dtype == np.dtype("int32")
    np.testing.assert_array_equal(out, arr)
    assert not out.flags.writeable
