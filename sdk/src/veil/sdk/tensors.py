"""Tensors on the wire: raw little-endian bytes + dtype + shape. Never pickle."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from veil.sdk.errors import ProtocolError, ProtocolFailure
from veil.v1 import common_pb2

__all__ = ["ALLOWED_DTYPES", "MAX_RANK", "from_proto", "tensor_parts", "to_proto", "wire_array"]

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


# The wire's (little-endian) dtype of each allowed name.
_WIRE_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in ALLOWED_DTYPES}

# More dimensions than any real model input has (NumPy itself stops at 64).
MAX_RANK = 32
# Byte counts (and spans) must fit a signed 64-bit integer, as ONNX Runtime counts them.
_MAX_SPAN = 2**63 - 1


def wire_array(array: npt.ArrayLike) -> npt.NDArray[np.generic]:
    """``array`` as it travels: C-contiguous, little-endian (a view when it already is one);
    refuses object, string and other non-numeric dtypes."""
    arr = np.asarray(array)
    if arr.dtype.name not in ALLOWED_DTYPES:
        raise ProtocolError(
            f"dtype {arr.dtype} cannot travel as a tensor", reason=ProtocolFailure.UNSUPPORTED
        )
    little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    # ``ascontiguousarray`` makes a 0-d array 1-d: keep the shape.
    return np.ascontiguousarray(little).reshape(arr.shape)


def _varint(n: int) -> bytes:
    """A protobuf base-128 varint (``n`` >= 0)."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_DATA_KEY = b"\x1a"  # Tensor.data: field 3, length-delimited


def tensor_parts(array: npt.ArrayLike) -> list[bytes | memoryview]:
    """``to_proto(array).SerializeToString()`` in parts whose data part is a view of the array's
    own buffer: joined, hashed or sent without a copy per serialization."""
    arr = wire_array(array)
    parts: list[bytes | memoryview] = [
        common_pb2.Tensor(dtype=arr.dtype.name, shape=arr.shape).SerializeToString()
    ]
    if arr.nbytes:
        parts += [_DATA_KEY + _varint(arr.nbytes), np.ravel(arr).data.cast("B")]
    return parts


def to_proto(array: npt.ArrayLike) -> common_pb2.Tensor:
    """Encode an array; refuses object, string and other non-numeric dtypes."""
    arr = wire_array(array)
    return common_pb2.Tensor(dtype=arr.dtype.name, shape=list(arr.shape), data=arr.tobytes())


def from_proto(
    tensor: common_pb2.Tensor, *, max_bytes: int | None = None
) -> npt.NDArray[np.generic]:
    """Decode a tensor, checking dtype, rank, shape and byte length; raise ``ProtocolError``.

    Besides the real byte size, the *span* (the byte size with every zero dimension counted as
    one) must fit the limit: ``[0, 2**62]`` holds no data but no array library can describe it.
    The result is a read-only view of the message's data in native byte order.
    """
    name = tensor.dtype
    dtype = _WIRE_DTYPES.get(name)
    if dtype is None:
        raise ProtocolError(f"unsupported tensor dtype {name[:32]!r}")
    shape = tuple(tensor.shape)  # protobuf int64s: Python ints
    if len(shape) > MAX_RANK:
        raise ProtocolError(f"tensor has {len(shape)} dimensions, at most {MAX_RANK} are allowed")
    if shape and min(shape) < 0:
        raise ProtocolError(f"tensor shape {list(shape)} has a negative dimension")
    limit = _MAX_SPAN if max_bytes is None else min(max_bytes, _MAX_SPAN)
    expected = math.prod(shape) * dtype.itemsize
    if expected > limit:
        raise ProtocolError(f"tensor of {expected} bytes exceeds the {limit}-byte limit")
    # Without a zero dimension the span is the byte size, just checked.
    if 0 in shape and (span := math.prod(max(d, 1) for d in shape) * dtype.itemsize) > limit:
        raise ProtocolError(
            f"empty tensor of shape {list(shape)} spans {span} bytes with its zero dimensions "
            f"counted as 1, over the {limit}-byte limit"
        )
    data = tensor.data  # each read of a bytes field copies it out of the message: read once
    if len(data) != expected:
        raise ProtocolError(
            f"tensor data is {len(data)} bytes, shape {list(shape)} of {name} needs {expected}"
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    # Little-endian is native on every host we know of; elsewhere convert (copy=False: a view
    # when no conversion is needed).
    return arr if dtype.isnative else arr.astype(dtype.newbyteorder("="), copy=False)
