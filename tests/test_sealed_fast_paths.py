"""The sealed path's shortcuts (issue 12) give exactly the values the slow way gives.

- Large inputs have their record HMAC computed on a helper thread while ONNX Runtime runs: the
  record must hold the same ``inputs_hmac`` as hashing the serialized input tensors in name order.
- The inputs' size is checked without reading (copying) their data: ``_data_bytes`` must equal
  ``len(tensor.data)`` for every length, at every varint width.
- A call sealed in a session (1.4) is recorded under the digest its receipt names.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from enclave_support import Served, mlp_model

from veil.enclave._enclave import PARALLEL_HMAC_BYTES, _data_bytes
from veil.sdk.audit import AuditRecord, EventType
from veil.sdk.tensors import to_proto
from veil.v1 import common_pb2

warnings.filterwarnings("ignore", message="trusting a test root")


def _inference_records(served: Served) -> list[AuditRecord]:
    path = served.data_dir / "audit" / "default" / "entries.jsonl"
    records = [AuditRecord.from_line(line) for line in path.read_bytes().splitlines()]
    return [r for r in records if r.event is EventType.INFERENCE]


@pytest.mark.parametrize("rows", [2, PARALLEL_HMAC_BYTES // 16 + 1])  # below / above the bar
def test_record_inputs_hmac_is_the_hmac_of_the_serialized_inputs(served: Served, rows: int) -> None:
    x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
    with served.client() as client:
        client.upload_model(mlp_model(), "m")
        client.infer("m", {"x": x})
        receipt = client.receipts[-1]
    (record,) = _inference_records(served)
    expected = served.enclave.audit.digest(to_proto(x).SerializeToString())
    assert record.details["inputs_hmac"] == expected
    assert record.details["request_sha256"] == receipt.request_digest


def test_session_calls_are_recorded_under_the_digest_their_receipts_name(served: Served) -> None:
    x = np.ones((3, 4), np.float32)
    with served.client() as client:
        client.upload_model(mlp_model(), "m")
        for _ in range(3):
            client.infer("m", {"x": x})
        assert client._core.session is not None  # the 2nd and 3rd went in the session
        digests = [r.request_digest for r in client.receipts[-3:]]
    recorded = [r.details["request_sha256"] for r in _inference_records(served)]
    assert recorded == digests and len(set(digests)) == 3


@pytest.mark.parametrize(
    "size", [0, 1, 2, 126, 127, 128, 129, 16_382, 16_383, 16_384, 16_385, 2_097_151, 2_097_152]
)
def test_data_bytes_is_the_data_length_without_reading_it(size: int) -> None:
    for shape in ([size], [1, size], [7, 3, size]):
        tensor = common_pb2.Tensor(dtype="uint8", shape=shape, data=b"\x01" * size)
        assert _data_bytes(tensor) == len(tensor.data) == size
    # a declared shape that disagrees with the data does not change what is counted
    assert _data_bytes(common_pb2.Tensor(dtype="float32", shape=[10**12], data=b"ab")) == 2


def test_onnx_runtime_pool_threads_may_run_on_every_allowed_cpu() -> None:
    import glob
    import os

    import onnxruntime as ort
    from enclave_support import mlp_model as model

    from veil.enclave._onnx import intra_op_layout

    allowed = sorted(os.sched_getaffinity(0))
    threads, affinities = intra_op_layout(0)
    assert threads == len(allowed)
    every = ",".join(str(c + 1) for c in allowed)  # ORT numbers CPUs from 1
    assert affinities == ";".join([every] * (threads - 1))
    assert intra_op_layout(1) == (1, "")
    assert intra_op_layout(3)[0] == 3 and intra_op_layout(3)[1].count(";") == 1
    if threads < 2:
        return  # one CPU: no pool, nothing to pin
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op_thread_affinities", affinities)
    session = ort.InferenceSession(model(), opts, providers=["CPUExecutionProvider"])
    session.run(None, {"x": np.ones((4, 4), np.float32)})
    masks = set()
    for status in glob.glob(f"/proc/{os.getpid()}/task/*/status"):
        with open(status) as lines:
            masks |= {ln.split()[1] for ln in lines if ln.startswith("Cpus_allowed_list")}
    wide = ",".join(str(c) for c in allowed)
    assert all(m in {wide, f"{allowed[0]}-{allowed[-1]}"} for m in masks), masks


_ARRAYS = {
    "float32 matrix": np.arange(12, dtype=np.float32).reshape(3, 4),
    "scalar": np.float64(2.5),
    "empty": np.zeros((0, 7), np.int64),
    "bool": np.array([True, False, True]),
    "float16 3-d": np.ones((2, 3, 4), np.float16),
    "big-endian": np.arange(5, dtype=">i4"),
    "non-contiguous": np.arange(40, dtype=np.uint16).reshape(5, 8)[:, ::3],
    "large": np.random.default_rng(0).normal(size=(300, 1000)).astype(np.float32),
    "wide dim": np.zeros((1, 300_000), np.uint8),
}


@pytest.mark.parametrize("label", sorted(_ARRAYS))
def test_infer_request_bytes_parse_as_the_message_protobuf_builds(label: str) -> None:
    from veil.sdk._core import ClientCore
    from veil.v1 import inference_pb2

    inputs = {"x": _ARRAYS[label], "second_input": np.array([[1, 2]], np.int8)}
    for names in (None, ["y", "probabilities"]):
        built = ClientCore.infer_request("scorer@2", inputs, names)
        raw = ClientCore.infer_payload("scorer@2", inputs, names)
        assert inference_pb2.InferRequest.FromString(raw) == built
        # and both say what the array is: its shape (0-d stays 0-d), dtype and bytes
        tensor = built.inputs["x"]
        array = np.asarray(_ARRAYS[label])
        assert list(tensor.shape) == list(array.shape) and tensor.dtype == array.dtype.name
        assert tensor.data == array.astype(array.dtype.newbyteorder("<")).tobytes()
    with pytest.raises(Exception, match="cannot travel"):
        ClientCore.infer_payload("m", {"x": np.array(["text"])}, None)
    with pytest.raises(Exception, match="at least one tensor"):
        ClientCore.infer_payload("m", {}, None)


def test_sealed_request_bytes_parse_as_the_whole_message() -> None:
    from veil.sdk._wire import sealed_request_bytes

    header = common_pb2.SealedRequest(
        version=1, suite=1, tenant="acme", request_id=b"r" * 16, timestamp_ms=-5,
        claims_digest=b"c" * 32, session_id=b"s" * 16, seq=2**32 - 1,
    )  # fmt: skip
    for sealed in (b"", b"\x00" * 17, bytes(range(256)) * 4097):
        whole = common_pb2.SealedRequest()
        whole.CopyFrom(header)
        whole.sealed = sealed
        parsed = common_pb2.SealedRequest.FromString(sealed_request_bytes(header, sealed))
        assert parsed == whole
