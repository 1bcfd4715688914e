"""Dynamic batching: concurrent requests for one model merge into one run, split back exactly."""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from enclave_support import TENANT_KEYS, mlp_model, start, write_config

from veil.enclave._batching import Batcher, BatchingConfig, BatchPolicy
from veil.enclave._config import ServerConfig
from veil.enclave._measurement import measure
from veil.sdk import RemoteError
from veil.sdk.errors import ConfigError

warnings.filterwarnings("ignore", message="trusting a test root")
ON = BatchPolicy(max_batch=8)


class GatedModel:
    """``y = 2x + 1`` row by row; the first run waits until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[int] = []  # rows per call
        self._first = True
        self._lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            first, self._first = self._first, False
        if first:
            assert self.gate.wait(10)
        x = inputs["x"]
        if np.isnan(x).any():
            raise ValueError("poisoned row")
        self.calls.append(x.shape[0])
        return {"y": 2 * x + 1, "rows": np.arange(x.shape[0])}


def _queued(batcher: Batcher) -> int:
    with batcher._lock:
        return sum(len(g.queue) for g in batcher._groups.values())


def _submit_all(batcher: Batcher, model: GatedModel, arrays: list[np.ndarray], policy=ON):  # type: ignore[no-untyped-def]
    results: list[object] = [None] * len(arrays)

    def work(i: int) -> None:
        try:
            results[i] = batcher.run("tenant/m@1", {"x": arrays[i]}, policy, model)
        except Exception as exc:
            results[i] = exc

    first = threading.Thread(target=work, args=(0,))
    first.start()
    while not model.calls and _queued(batcher) != 0:  # the first run is under way (gated)
        time.sleep(0.001)
    others = [threading.Thread(target=work, args=(i,)) for i in range(1, len(arrays))]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while _queued(batcher) < len(arrays) - 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    model.gate.set()
    for t in [first, *others]:
        t.join()
    return results


def test_requests_queued_during_a_run_merge_and_each_gets_its_own_rows() -> None:
    batcher = Batcher()
    model = GatedModel()
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(i % 3 + 1, 4)).astype(np.float32) for i in range(7)]
    results = _submit_all(batcher, model, arrays)
    # the first ran alone; the six that queued meanwhile ran as one merged call
    assert model.calls == [1, sum(a.shape[0] for a in arrays[1:])]
    assert batcher.stats == (2, 7)
    for x, result in zip(arrays, results, strict=True):
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["y"], 2 * x + 1)
        assert result["rows"].shape == (x.shape[0],)


def test_max_batch_splits_the_queue_and_the_lead_passes_on() -> None:
    batcher = Batcher()
    model = GatedModel()
    arrays = [np.full((1, 2), i, np.float32) for i in range(9)]
    results = _submit_all(batcher, model, arrays, BatchPolicy(max_batch=3))
    assert model.calls == [1, 3, 3, 2]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 2), 2 * i + 1))  # type: ignore[index]


def test_a_failing_merged_run_is_retried_one_by_one_and_only_the_bad_request_fails() -> None:
    batcher = Batcher()
    model = GatedModel()
    arrays = [np.ones((2, 4), np.float32) * i for i in range(5)]
    arrays[3] = np.full((2, 4), np.nan, np.float32)
    results = _submit_all(batcher, model, arrays)
    assert isinstance(results[3], ValueError)
    for i in (0, 1, 2, 4):
        np.testing.assert_array_equal(results[i]["y"], 2 * arrays[i] + 1)  # type: ignore[index]


def test_different_shapes_or_policy_off_never_merge() -> None:
    batcher = Batcher()
    calls: list[tuple[int, ...]] = []

    def model(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(inputs["x"].shape)
        return {"y": inputs["x"]}

    assert batcher.run("k", {"x": np.zeros((2, 3))}, BatchPolicy(), model)["y"].shape == (2, 3)
    assert batcher.run("k", {"x": np.zeros(())}, ON, model)["y"].shape == ()  # no batch dim
    assert batcher.stats == (0, 0)  # neither went through a queue
    # inputs that disagree on their rows cannot be merged either
    mixed = {"x": np.zeros((2, 3)), "z": np.zeros((1, 3))}
    assert batcher.run("k", mixed, ON, lambda i: {"y": i["x"]})["y"].shape == (2, 3)


def test_batching_config_parses_and_is_measured_only_when_set(tmp_path: Path) -> None:
    write_config(tmp_path)
    base = ServerConfig.load(tmp_path)
    assert not base.batching.configured and base.batching.canonical() == []
    text = (tmp_path / "config.toml").read_text()
    (tmp_path / "config.toml").write_text(
        text + '\n[batching]\nmax_batch = 16\n[batching.models."acme/m"]\nmax_delay_ms = 2\n'
    )
    config = ServerConfig.load(tmp_path)
    assert config.batching.for_model("default", "x") == BatchPolicy(16, 0.0)
    assert config.batching.for_model("acme", "m") == BatchPolicy(16, 2.0)
    assert measure(config) != measure(base)
    for bad in (
        {"max_batch": 0},
        {"max_batch": True},
        {"max_delay_ms": -1},
        {"max_batch": 2, "colour": 1},
        {"models": {"no-slash": {}}},
    ):
        with pytest.raises(ConfigError):
            BatchingConfig.from_dict(bad, source="t")


def test_sealed_batched_inference_end_to_end(tmp_path: Path) -> None:
    """Concurrent clients of two tenants on one batched model: each gets its own exact answer."""
    write_config(tmp_path)
    text = (tmp_path / "config.toml").read_text()
    (tmp_path / "config.toml").write_text(
        text + "\n[batching]\nmax_batch = 16\nmax_delay_ms = 50\n"
    )
    served = start(tmp_path)
    model = mlp_model(inputs=4, hidden=16, outputs=3, seed=3)
    reference = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    try:
        for tenant in TENANT_KEYS:
            with served.client(tenant) as client:
                client.upload_model(model, "m")
        rng = np.random.default_rng(9)
        work = [
            (tenant, rng.normal(size=(i % 4 + 1, 4)).astype(np.float32))
            for i, tenant in enumerate(list(TENANT_KEYS) * 6)
        ]
        results: list[object] = [None] * len(work)
        barrier = threading.Barrier(len(work))

        def call(i: int) -> None:
            tenant, x = work[i]
            with served.client(tenant) as client:
                client.attest()
                barrier.wait()
                try:
                    results[i] = client.infer("m", {"x": x})
                except RemoteError as exc:
                    results[i] = exc

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(work))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for (_, x), result in zip(work, results, strict=True):
            assert isinstance(result, dict), result
            logits, probs = reference.run(["logits", "probs"], {"x": x})
            np.testing.assert_allclose(result["logits"], logits, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(result["probs"], probs, rtol=1e-5, atol=1e-6)
        runs, served_requests = served.enclave.engine.batch_stats
        assert served_requests == len(work) and runs <= len(work)
        # a wrong input is refused for its caller only, and the service keeps serving
        with served.client() as client, pytest.raises(RemoteError):
            client.infer("m", {"x": np.zeros((2, 5), np.float32)})
        served.assert_healthy()
    finally:
        served.running.stop()
