"""Tensors on the wire: raw little-endian bytes + dtype + shape. Never pickle."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from protos.veil.v1 import common_pb2
from sdk._errors import ProtocolError

__all__ = ["ALLOWED_DTYPES", "from_proto", "to_proto"]

ALLOWED_DTYPES = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)


def to_proto(array: npt.ArrayLike) -> common_pb2.Tensor:
    """Encode an array; refuses object, string and other non-numeric dtypes."""
    arr = np.asarray(array)
    if arr.dtype.name not in ALLOWED_DTYPES:
        raise ProtocolError(f"dtype {arr.dtype} cannot travel as a tensor")
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    return common_pb2.Tensor(
        dtype=arr.dtype.name, shape=list(arr.shape), data=np.ascontiguousarray(little).tobytes()
    )


def from_proto(
    tensor: common_pb2.Tensor, *, max_bytes: int | None = None
) -> npt.NDArray[np.generic]:
    """Decode a tensor, checking dtype, shape and byte length; raise ``ProtocolError``."""
    if tensor.dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"unsupported tensor dtype {tensor.dtype!r}")
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise ProtocolError(f"tensor shape {list(shape)} has a negative dimension")
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    expected = math.prod(shape) * dtype.itemsize
    if max_bytes is not None and expected > max_bytes:
        raise ProtocolError(f"tensor of {expected} bytes exceeds the {max_bytes}-byte limit")
    if len(tensor.data) != expected:
        raise ProtocolError(
            f"tensor data is {len(tensor.data)} bytes, shape {list(shape)} of "
            f"{tensor.dtype} needs {expected}"
        )
    arr = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)
