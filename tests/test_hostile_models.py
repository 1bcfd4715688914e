"""The hostile-model corpus against a real server, and the admission walk per position.

The server runs with small limits (1 s, 256 MiB, 1000 nodes) so every bomb is stopped fast and
cheaply. After each entry the service must still be healthy and a normal inference must still
give the right answer. The server's working directory is a temporary folder holding a planted
secret, so a relative external-data path points at a file that exists.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from enclave_support import Served, mlp_model, start, write_config
from hostile_models import (
    INFER,
    PLANTED_SECRET,
    Hostile,
    allocation_bombs,
    corpus,
    external_data_models,
    loop_bombs,
)

from veil.enclave._admission import validate_onnx
from veil.enclave._errors import InvalidInput, LimitExceeded, Overloaded, TimedOut
from veil.enclave._limits import InferenceLimits, Limits, MiB
from veil.enclave._onnx import InferenceEngine
from veil.sdk import RemoteError

warnings.filterwarnings("ignore", message="trusting a test root")

TIMEOUT_S = 1.0
MEMORY = 256 * MiB
ROOMY = 1024 * MiB
MAX_NODES = 1000
LIMITS = replace(Limits(), max_graph_nodes=MAX_NODES)
LIMITS_TOML = f"""
[limits]
inference_timeout_seconds = {TIMEOUT_S}
inference_memory_bytes = {MEMORY}
max_graph_nodes = {MAX_NODES}
[limits.tenants.acme]
inference_memory_bytes = {ROOMY}
[limits.models."default/roomy"]
inference_memory_bytes = {ROOMY}
"""
X = np.random.default_rng(7).normal(size=(3, 4)).astype(np.float32)
NORMAL = mlp_model()
EXPECTED = ort.InferenceSession(NORMAL, providers=["CPUExecutionProvider"]).run(None, {"x": X})


def _corpus(planted: Path, cwd: Path) -> list[Hostile]:
    return corpus(
        planted,
        cwd,
        max_trip_count=LIMITS.max_loop_trip_count,
        timeout_seconds=TIMEOUT_S,
        memory_bytes=MEMORY,
        max_depth=LIMITS.max_graph_depth,
        max_nodes=MAX_NODES,
    )


NAMES = [h.name for h in _corpus(Path("/planted/secret"), Path("/planted"))]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The server's working directory, with the planted secret in it."""
    folder = tmp_path_factory.mktemp("cwd")
    (folder / "secret.bin").write_bytes(PLANTED_SECRET)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield folder


@pytest.fixture(scope="module")
def hostile_server(
    tmp_path_factory: pytest.TempPathFactory, tee_template: Path, workdir: Path
) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("hostile") / "data"
    shutil.copytree(tee_template, data / "simulated-tee")
    write_config(data)
    with (data / "config.toml").open("a") as config:
        config.write(LIMITS_TOML)
    served = start(data)
    try:
        with served.client() as client:
            client.upload_model(NORMAL, "normal")
        yield served
    finally:
        served.running.stop(grace=None)


@pytest.fixture(scope="module")
def entries(workdir: Path) -> dict[str, Hostile]:
    return {h.name: h for h in _corpus(workdir / "secret.bin", workdir)}


def _rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def _peak_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0])


def _cpu_seconds_while_idle(seconds: float) -> float:
    start = time.process_time()
    time.sleep(seconds)
    return time.process_time() - start


def _assert_still_serving(served: Served) -> None:
    served.assert_healthy()
    with served.client() as client:
        out = client.infer("normal", {"x": X})
    assert out["logits"].tobytes() == EXPECTED[0].tobytes()


# -- the corpus against a real server ------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_hostile_model_is_stopped_and_the_server_keeps_serving(
    hostile_server: Served, entries: dict[str, Hostile], name: str
) -> None:
    entry = entries[name]
    model_name = re.sub(r"[^A-Za-z0-9._-]", "-", entry.name)
    stored_before = hostile_server.stored_files()
    with hostile_server.client() as client:
        if entry.refused_at != INFER:
            with pytest.raises(RemoteError) as err:
                client.upload_model(entry.model, model_name)
            assert hostile_server.stored_files() == stored_before
        else:
            client.upload_model(entry.model, model_name)
            Path("/proc/self/clear_refs").write_text("5")  # restart the peak-RSS count
            baseline, began = _rss_kib(), time.monotonic()
            with pytest.raises(RemoteError) as err:
                client.infer(model_name, entry.inputs)
            elapsed = time.monotonic() - began
            assert elapsed < 10  # the bug was forever (Loop) or an OOM kill (allocation)
            grown = (_peak_kib() - baseline) * 1024
            assert grown < MEMORY + 128 * MiB, f"RSS grew by {grown // MiB} MiB"
            if entry.code == "DEADLINE_EXCEEDED":
                assert _cpu_seconds_while_idle(1.0) < 0.5  # the run no longer burns a core
    assert (err.value.code, err.value.reason) == (entry.code, entry.reason)
    assert err.value.detail.startswith(entry.detail)
    assert len(err.value.detail) < 300
    _assert_still_serving(hostile_server)


def test_memory_limit_follows_tenant_and_model_overrides(hostile_server: Served) -> None:
    bomb = next(h for h in allocation_bombs(MEMORY) if h.name == "expand-12.8GB")
    inputs = {"x": np.ones(1), "shape": np.array([40_000_000], np.int64)}  # 320 MB
    with hostile_server.client() as client:
        client.upload_model(bomb.model, "roomy")
        client.upload_model(bomb.model, "tight")
        with pytest.raises(RemoteError) as err:
            client.infer("tight", inputs)
        assert (err.value.code, err.value.reason) == ("RESOURCE_EXHAUSTED", "memory-limit")
        assert client.infer("roomy", inputs)["s"] == 40_000_000.0
    with hostile_server.client("acme") as client:
        client.upload_model(bomb.model, "tight")
        assert client.infer("tight", inputs)["s"] == 40_000_000.0
    _assert_still_serving(hostile_server)


# -- the admission walk, position by position ----------------------------------------------------


@pytest.mark.parametrize("entry", external_data_models(Path("/srv/secret"), Path("/srv")), ids=str)
def test_external_data_is_refused_in_every_position(entry: Hostile) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_onnx(entry.model, max_bytes=1 << 30, allowed_domains=[""], limits=LIMITS)
    assert str(err.value).startswith(entry.detail)


def test_admission_bounds_come_from_the_limits() -> None:
    bomb = next(h for h in loop_bombs(10, TIMEOUT_S) if h.name == "loop-const-node")
    with pytest.raises(InvalidInput, match="ONNX Loop runs 11 times, limit is 10"):
        validate_onnx(
            bomb.model,
            max_bytes=1 << 30,
            allowed_domains=[""],
            limits=replace(LIMITS, max_loop_trip_count=10),
        )
    assert (
        validate_onnx(
            bomb.model,
            max_bytes=1 << 30,
            allowed_domains=[""],
            limits=replace(LIMITS, max_loop_trip_count=11),
        )
        .inputs[0]
        .name
        == "x"
    )


# -- the engine: defence in depth, shutdown, messages --------------------------------------------


def test_engine_refuses_a_stored_model_that_reads_a_file(workdir: Path) -> None:
    """A model that slipped past admission (stored by an older version) is not loaded."""
    hostile = next(
        h
        for h in external_data_models(workdir / "secret.bin", workdir)
        if h.name == "external-attr-sparse-tensor-rel"
    )
    engine = InferenceEngine(["CPUExecutionProvider"])
    with pytest.raises(InvalidInput, match="references external data"):
        engine.run(
            "t/leak@1",
            lambda: hostile.model,
            {"x": np.zeros(8, np.float32)},
            limits=InferenceLimits(TIMEOUT_S, MEMORY),
        )


def test_terminate_all_stops_runs_in_flight_and_refuses_new_ones() -> None:
    bomb = next(h for h in loop_bombs(10, TIMEOUT_S) if h.name == "loop-input-2^62")
    engine = InferenceEngine(["CPUExecutionProvider"])
    patient = InferenceLimits(timeout_seconds=300, memory_bytes=MEMORY)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            engine.run("t/bomb@1", lambda: bomb.model, bomb.inputs, limits=patient)
        except BaseException as exc:  # the test inspects what was raised
            outcome.append(exc)

    worker = threading.Thread(target=run)
    began = time.monotonic()
    worker.start()
    while engine.in_flight == 0:
        assert time.monotonic() - began < 10
        time.sleep(0.01)
    assert engine.terminate_all() == 1
    worker.join(10)
    assert not worker.is_alive()
    assert time.monotonic() - began < 10
    assert len(outcome) == 1 and isinstance(outcome[0], TimedOut)
    assert str(outcome[0]) == "inference stopped: the service is shutting down"
    with pytest.raises(Overloaded):
        engine.run("t/bomb@1", lambda: bomb.model, bomb.inputs, limits=patient)


def test_memory_failure_is_limit_exceeded_not_invalid_input() -> None:
    bomb = next(h for h in allocation_bombs(MEMORY) if h.name == "constant-of-shape-12.8GB")
    engine = InferenceEngine(["CPUExecutionProvider"])
    with pytest.raises(LimitExceeded, match=f"more than its {MEMORY} byte memory limit"):
        engine.run("t/fill@1", lambda: bomb.model, bomb.inputs, limits=InferenceLimits(1, MEMORY))


def test_messages_about_names_stay_short() -> None:
    engine = InferenceEngine(["CPUExecutionProvider"])
    bogus = {f"diagnosis_code_{i:05d}_" + "x" * 60: np.zeros(1, np.float32) for i in range(10_000)}
    with pytest.raises(InvalidInput) as err:
        engine.run("t/m@1", lambda: NORMAL, bogus, limits=InferenceLimits(1, MEMORY))
    message = str(err.value)
    assert message.startswith("model inputs are ['x']; missing ['x'], unexpected [")
    assert message.endswith(", … 10000 in all]")
    assert len(message) < 300


@pytest.mark.parametrize("raw", [b"\x01\x02\x03", b"\xff" * 16], ids=["short", "long"])
def test_malformed_trip_count_is_refused_not_crashed(raw: bytes) -> None:
    bomb = next(h for h in loop_bombs(10, TIMEOUT_S) if h.name == "loop-const-initializer")
    model = onnx.load_model_from_string(bomb.model)
    model.graph.initializer[0].raw_data = raw
    with pytest.raises(InvalidInput, match=r"ONNX checker rejected|ONNX Runtime could not load"):
        validate_onnx(
            model.SerializeToString(), max_bytes=1 << 30, allowed_domains=[""], limits=LIMITS
        )


def _watchdog_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "veil-inference-watchdog")


def test_one_watchdog_thread_serves_every_run() -> None:
    before = _watchdog_threads()
    engine = InferenceEngine(["CPUExecutionProvider"])
    for _ in range(20):
        engine.run("t/m@1", lambda: NORMAL, {"x": X}, limits=InferenceLimits(5, MEMORY))
    assert _watchdog_threads() == before + 1
    assert engine.in_flight == 0
