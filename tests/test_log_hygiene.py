"""An audit of log lines: at the default INFO level the server names no model, tensor or file.

Issue 10, item 6: the INFO log wrote model refs ("model registered: tenant=… ref=…") and every
refusal's detailed message ("refused INVALID_ARGUMENT: model inputs are ['diagnosis_code']…").
Here a real server serves uploads, inferences, listing, deletes and failures with distinctive
names while every logger is captured at INFO; no line may contain any of those names.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import onnx
import pytest
from enclave_support import Served
from onnx import TensorProto, helper

from veil.sdk import RemoteError

warnings.filterwarnings("ignore", message="trusting a test root")
X = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)

# Every name a tenant chose, and every fragment of its data the server saw.
MODEL = "hivstatus_model"
INPUT = "patient_ssn_input"
OUTPUT = "diagnosis_output"
GRAPH = "oncology_graph"
SECRETS = (
    MODEL,
    INPUT,
    OUTPUT,
    GRAPH,
    "hivstatus",
    "patient_ssn",
    "psychiatric_notes",
    "cardiology_registry",
    "genome_classifier",
    "diagnosis_net",
    "unknown_tensor_name",
    "hidden_embedding",
    "[3, 2]",
)


def _model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Relu", [INPUT], [OUTPUT])],
        GRAPH,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _dataset() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, x=rng.normal(size=(64, 4)).astype(np.float32), y=rng.integers(0, 2, 64))
    return buf.getvalue()


def _exercise(served: Served) -> int:
    """Successes and failures of every kind, each naming something sealed. Returns refusals."""
    refusals = 0

    def refused(call: object) -> None:
        nonlocal refusals
        assert callable(call)
        with pytest.raises(RemoteError):
            call()
        refusals += 1

    with served.client() as client:
        client.upload_model(_model(), MODEL)
        client.upload_model(_model(), MODEL)
        assert client.infer(MODEL, {INPUT: X})[OUTPUT].shape == (3, 4)
        assert [m.ref for m in client.list_models()] == [f"{MODEL}@1", f"{MODEL}@2"]
        refused(lambda: client.infer("cardiology_registry@3", {INPUT: X}))
        refused(lambda: client.infer(MODEL, {"unknown_tensor_name": X}))
        refused(lambda: client.infer(MODEL, {INPUT: X[:, :2]}))
        refused(lambda: client.infer(MODEL, {INPUT: X}, output_names=["hidden_embedding"]))
        refused(lambda: client.upload_model(b"psychiatric_notes: not a model", "psychiatric_notes"))
        refused(lambda: client.delete_model("cardiology_registry"))
        dataset = client.upload_dataset(_dataset(), format="npz")
        refused(
            lambda: client.train(
                dataset, "diagnosis_net", target_epsilon=1.0, name="genome_classifier"
            ).result()
        )
        assert [m.ref for m in client.delete_model(f"{MODEL}@1")] == [f"{MODEL}@1"]
        client.budget(dataset)
    with served.client(api_key="not-the-key") as intruder:
        refused(lambda: intruder.infer(MODEL, {INPUT: X}))
    return refusals


def test_info_log_names_nothing_sealed(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # the default level, for every logger (veil.*, grpc, …)
    refusals = _exercise(served)
    lines = [
        f"{r.name}: {r.getMessage()} {r.exc_text or ''}"
        for r in caplog.records
        if r.levelno >= logging.INFO
    ]
    leaks = [(line, s) for line in lines for s in SECRETS if s in line]
    assert leaks == []
    # The audit saw something: registrations and every refusal were logged (by code and reason).
    assert sum("model registered" in line for line in lines) == 2
    assert sum(line.startswith("veil.enclave: refused ") for line in lines) == refusals


def test_debug_log_may_name_what_info_does_not(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """DEBUG is the documented place for detail: the same refusal there names the model."""
    caplog.set_level(logging.DEBUG, logger="veil")
    with served.client() as client, pytest.raises(RemoteError):
        client.infer("cardiology_registry@3", {INPUT: X})
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("cardiology_registry@3" in line for line in debug)
