"""Malformed inputs at the edges get INVALID_ARGUMENT with a precise message, never INTERNAL.

Regressions for issue 10 item 9: a 100-dimension tensor, shape ``[0, 2**62]`` and model ref
``m@²`` answered INTERNAL, and ``m@\uff11`` (a full-width digit) ran ``m@1``. Requests are sealed by
the real SDK (bypassing only its own tensor encoder) and sent to a real server on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from enclave_support import Served, mlp_model, start, write_config

from veil.enclave._errors import InvalidInput
from veil.enclave._store import MAX_VERSION, parse_ref
from veil.sdk import Client, RemoteError
from veil.sdk.errors import ProtocolError
from veil.sdk.protocol import Method
from veil.sdk.tensors import MAX_RANK, from_proto
from veil.v1 import common_pb2, inference_pb2

warnings.filterwarnings("ignore", message="trusting a test root")
LIMIT = 64 * 1024 * 1024  # the default max_message_bytes, the server's per-tensor byte limit
VERSION_MESSAGE = (
    f"model version after '@' must be an integer from 1 to {MAX_VERSION} "
    "in ASCII digits, without leading zeros"
)


@pytest.fixture(scope="module")
def edge_server(tmp_path_factory: pytest.TempPathFactory, tee_template: Path) -> Iterator[Served]:
    """One server for the module, holding model ``m`` (version 1) for tenant ``default``."""
    data = tmp_path_factory.mktemp("edges") / "data"
    shutil.copytree(tee_template, data / "simulated-tee")
    write_config(data)
    served = start(data)
    try:
        with served.client() as client:
            client.upload_model(mlp_model(), "m")
        yield served
    finally:
        served.running.stop(grace=None)


def _infer_raw(client: Client, request: inference_pb2.InferRequest) -> None:
    client._unary(  # the SDK's own sealing, fed a request its encoder would never build
        Method.INFER, request, inference_pb2.InferResponse()
    )


def _refused(served: Served, tensor: common_pb2.Tensor, model: str = "m") -> tuple[str, str, str]:
    request = inference_pb2.InferRequest(model=model)
    request.inputs["x"].CopyFrom(tensor)
    with served.client() as client, pytest.raises(RemoteError) as err:
        _infer_raw(client, request)
    return err.value.code, err.value.reason, err.value.detail


# -- tensors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (
            common_pb2.Tensor(dtype="float32", shape=[1] * 100, data=b"\0" * 4),
            f"tensor has 100 dimensions, at most {MAX_RANK} are allowed",
        ),
        (
            common_pb2.Tensor(dtype="float32", shape=[1] * (MAX_RANK + 1), data=b"\0" * 4),
            f"tensor has {MAX_RANK + 1} dimensions, at most {MAX_RANK} are allowed",
        ),
        (
            common_pb2.Tensor(dtype="float32", shape=[0, 2**62], data=b""),
            f"empty tensor of shape [0, {2**62}] spans {2**64} bytes with its zero dimensions "
            f"counted as 1, over the {LIMIT}-byte limit",
        ),
        (
            common_pb2.Tensor(dtype="uint8", shape=[2**40, 0, 2**40], data=b""),
            f"empty tensor of shape [{2**40}, 0, {2**40}] spans {2**80} bytes with its zero "
            f"dimensions counted as 1, over the {LIMIT}-byte limit",
        ),
        (
            common_pb2.Tensor(dtype="float32", shape=[-1, 4], data=b"\0" * 16),
            "tensor shape [-1, 4] has a negative dimension",
        ),
        (
            common_pb2.Tensor(dtype="float32", shape=[-(2**63), 4], data=b""),
            f"tensor shape [{-(2**63)}, 4] has a negative dimension",
        ),
        (
            common_pb2.Tensor(dtype="float32", shape=[2**62, 4], data=b"\0" * 16),
            f"tensor of {2**66} bytes exceeds the {LIMIT}-byte limit",
        ),
        (
            common_pb2.Tensor(dtype="float64", shape=[2**32, 2**32], data=b""),
            f"tensor of {2**67} bytes exceeds the {LIMIT}-byte limit",
        ),
        (
            common_pb2.Tensor(dtype="float32", shape=[2, 4], data=b"\0" * 31),
            "tensor data is 31 bytes, shape [2, 4] of float32 needs 32",
        ),
        (
            common_pb2.Tensor(dtype="float32", shape=[2, 4], data=b"\0" * 33),
            "tensor data is 33 bytes, shape [2, 4] of float32 needs 32",
        ),
        (
            common_pb2.Tensor(dtype="float32", shape=[], data=b""),
            "tensor data is 0 bytes, shape [] of float32 needs 4",
        ),
    ],
    ids=[
        "100-dims",
        "rank-33",
        "zero-by-2^62",
        "zero-between-huge",
        "negative",
        "int64-min",
        "product-overflows-int64",
        "product-2^64-elements",
        "short-data",
        "long-data",
        "scalar-no-data",
    ],
)
def test_bad_tensor_shapes_are_invalid_argument(
    edge_server: Served, tensor: common_pb2.Tensor, message: str
) -> None:
    assert _refused(edge_server, tensor) == ("INVALID_ARGUMENT", "malformed", message)


@pytest.mark.parametrize(
    "dtype", ["object", "str", "complex64", "bfloat16", "float8", "<f4", "", "float32\0"]
)
def test_dtypes_not_allowed_are_invalid_argument(edge_server: Served, dtype: str) -> None:
    tensor = common_pb2.Tensor(dtype=dtype, shape=[1, 4], data=b"\0" * 16)
    assert _refused(edge_server, tensor) == (
        "INVALID_ARGUMENT",
        "malformed",
        f"unsupported tensor dtype {dtype!r}",
    )


def test_overlong_dtype_is_not_echoed_whole(edge_server: Served) -> None:
    code, _, detail = _refused(edge_server, common_pb2.Tensor(dtype="x" * 10_000, shape=[1]))
    assert code == "INVALID_ARGUMENT"
    assert detail == f"unsupported tensor dtype {'x' * 32!r}"


def test_the_service_still_serves_after_every_edge(edge_server: Served) -> None:
    x = np.zeros((2, 4), dtype=np.float32)
    with edge_server.client() as client:
        assert client.infer("m@1", {"x": x})["probs"].shape == (2, 3)
    edge_server.assert_healthy()


# -- model refs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    [
        "m@²",  # superscript two: isdigit() but int() fails (was INTERNAL)
        "m@\uff11",  # full-width one: int() reads 1 (ran m@1)
        "m@\u0661",  # Arabic-Indic one
        "m@01",  # a second spelling of m@1
        "m@0",
        "m@",
        "m@-1",
        "m@+1",
        "m@ 1",
        "m@1 ",
        "m@1\n",
        "m@1@1",
        f"m@{MAX_VERSION + 1}",
        "m@" + "9" * 5000,  # int() refuses more than 4300 digits (was INTERNAL)
    ],
)
def test_bad_versions_are_invalid_argument(edge_server: Served, ref: str) -> None:
    x = np.zeros((1, 4), dtype=np.float32)
    with edge_server.client() as client:
        with pytest.raises(RemoteError) as err:
            client.infer(ref, {"x": x})
        assert (err.value.code, err.value.reason, err.value.detail) == (
            "INVALID_ARGUMENT",
            "invalid-input",
            VERSION_MESSAGE,
        )
        with pytest.raises(RemoteError) as err:
            client.delete_model(ref)
        assert err.value.code == "INVALID_ARGUMENT"
        assert [r.ref for r in client.list_models()] == ["m@1"]


@pytest.mark.parametrize("name", ["m\n", "\uff4d", "m\u0301", "", "x" * 65, "-m", ".m"])
def test_bad_names_are_invalid_argument(edge_server: Served, name: str) -> None:
    with edge_server.client() as client, pytest.raises(RemoteError) as err:
        client.infer(name, {"x": np.zeros((1, 4), dtype=np.float32)})
    assert (err.value.code, err.value.reason) == ("INVALID_ARGUMENT", "invalid-input")
    assert err.value.detail.startswith("model name ")
    assert len(err.value.detail) < 120  # a long name is not echoed whole


def test_largest_version_is_a_plain_not_found(edge_server: Served) -> None:
    with edge_server.client() as client, pytest.raises(RemoteError) as err:
        client.infer(f"m@{MAX_VERSION}", {"x": np.zeros((1, 4), dtype=np.float32)})
    assert err.value.code == "NOT_FOUND"


# -- the same rules, in process ---------------------------------------------------------------


def test_parse_ref_accepts_only_canonical_ascii_versions() -> None:
    assert parse_ref("m") == ("m", None)
    assert parse_ref("m@1") == ("m", 1)
    assert parse_ref(f"a.b_c-9@{MAX_VERSION}") == ("a.b_c-9", MAX_VERSION)
    for ref in ("m@\uff11", "m@²", "m@01", "m@0", f"m@{MAX_VERSION + 1}", "m\n", "m@1\n"):
        with pytest.raises(InvalidInput):
            parse_ref(ref)


def test_from_proto_checks_spans_without_a_server_limit() -> None:
    with pytest.raises(ProtocolError, match="spans"):
        from_proto(common_pb2.Tensor(dtype="float32", shape=[0, 2**62]))
    with pytest.raises(ProtocolError, match="exceeds"):
        from_proto(common_pb2.Tensor(dtype="float32", shape=[2**62, 2]))
    empty = from_proto(common_pb2.Tensor(dtype="float32", shape=[0, 4]))
    assert empty.shape == (0, 4)
    deepest = from_proto(common_pb2.Tensor(dtype="int8", shape=[1] * MAX_RANK, data=b"\1"))
    assert deepest.ndim == MAX_RANK
