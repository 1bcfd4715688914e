"""Protobuf wire bytes built straight from their parts, for messages that carry bulk data.

Building an ``InferRequest`` through protobuf copies a tensor four times (``tobytes``, into the
``Tensor``, into the request's map, out in ``SerializeToString``), and a ``SealedRequest`` twice
more (into the message, out for gRPC). At a megabyte each copy is a fresh ``mmap`` and its page
faults in a thread's malloc arena (~0.4 ms here). These functions join the parts once. The
output is ordinary protobuf wire format (fields may come in any order), which any protobuf
parser reads as the message ``veil.v1`` defines; tests parse it back and compare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy.typing as npt

from veil.sdk.tensors import _varint, tensor_parts
from veil.v1 import common_pb2

__all__ = ["infer_request_bytes", "sealed_request_bytes"]

_LEN = 2  # wire type: length-delimited


def _key(field: int) -> bytes:
    return _varint(field << 3 | _LEN)


def _field(field: int, data: bytes) -> bytes:
    return _key(field) + _varint(len(data)) + data


def infer_request_bytes(
    model: str,
    arrays: Mapping[str, npt.ArrayLike],
    output_names: Sequence[str] = (),
) -> bytes:
    """A serialized ``veil.v1.InferRequest``; each array's data is copied once, into the result.

    ``InferRequest { model = 1; map<string, Tensor> inputs = 2; repeated output_names = 3 }``,
    ``Tensor { dtype = 1; repeated int64 shape = 2 (packed); bytes data = 3 }``.
    """
    parts: list[bytes | memoryview] = [_field(1, model.encode())] if model else []
    for name, value in arrays.items():
        tensor = tensor_parts(value)
        tensor_len = sum(len(part) for part in tensor)
        entry_head = _field(1, name.encode()) + _key(2) + _varint(tensor_len)
        parts += [_key(2), _varint(len(entry_head) + tensor_len), entry_head, *tensor]
    parts += [_field(3, n.encode()) for n in output_names]
    return b"".join(parts)


def sealed_request_bytes(header: common_pb2.SealedRequest, sealed: bytes) -> bytes:
    """``header`` (a ``SealedRequest`` without ``sealed``) serialized, ``sealed`` as field 7."""
    return b"".join((header.SerializeToString(), _key(7), _varint(len(sealed)), sealed))
