"""Operability (issue 13): metrics, traces, JSON logs, reflection, and the delta budget model.

Real servers on loopback: the metrics are scraped from the real listener over HTTP, the spans
come from the real handlers through the OpenTelemetry SDK (an in-memory exporter is the only
test-side part), and training jobs run for real against the real ledger.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from enclave_support import TENANT_KEYS, Served, mlp_model, start
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from veil.enclave._config import ServerConfig
from veil.enclave._enclave import Enclave
from veil.enclave._logs import configure_logging
from veil.enclave._telemetry import ObservabilityConfig, Telemetry, TraceExporter
from veil.enclave.server import create_server
from veil.enclave.tee._simulated import SimulatedSnp
from veil.privacy import BudgetConfig, BudgetLedger
from veil.privacy._training import AccountantKind, TrainingPlan
from veil.sdk import BudgetInfo, Client, PrivacyBudgetExceeded
from veil.sdk.errors import ConfigError, RemoteError

# A model name only the sealed payloads carry: it must show up in no metric and no span.
SECRET_MODEL = "zz-sealed-model-name"
SECRET_INPUT = 1234.5678


def _append_config(data_dir: Path, text: str) -> None:
    path = data_dir / "config.toml"
    path.write_text(path.read_text() + "\n" + text + "\n")


def _sealed_calls(client: Client, infers: int) -> None:
    client.upload_model(mlp_model(), name=SECRET_MODEL)
    for _ in range(infers):
        client.infer(SECRET_MODEL, {"x": np.full((1, 4), SECRET_INPUT, dtype=np.float32)})


def _scrape(address: tuple[str, int]) -> str:
    host, port = address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return str(response.read().decode())


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


INFER = "veil.v1.InferenceService/Infer"


def test_metrics_endpoint_counts_sealed_calls(data_dir: Path) -> None:
    _append_config(data_dir, '[metrics]\naddress = "127.0.0.1:0"')
    served = start(data_dir)
    try:
        address = served.running.telemetry.metrics_address
        assert address is not None and address[1] > 0
        before = _samples(_scrape(address))
        with served.client() as client:
            _sealed_calls(client, infers=3)
        with served.client(api_key="not-the-key") as intruder, pytest.raises(RemoteError):
            intruder.list_models()
        with served.client() as client, pytest.raises(RemoteError):
            client.infer("no-such-model", {"x": np.zeros((1, 4), dtype=np.float32)})
        text = _scrape(address)
    finally:
        served.running.stop(grace=None)
    after = _samples(text)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("veil_requests_total", method=INFER, status="OK", tenant="default") == 3
    assert moved("veil_requests_total", method=INFER, status="NOT_FOUND", tenant="default") == 1
    listing = "veil.v1.ModelService/ListModels"
    assert (
        moved("veil_requests_total", method=listing, status="UNAUTHENTICATED", tenant="default")
        == 1
    )
    upload = "veil.v1.ModelService/UploadModel"
    assert moved("veil_requests_total", method=upload, status="OK", tenant="default") == 1
    assert moved("veil_request_duration_seconds_count", method=INFER) == 4
    assert moved("veil_request_duration_seconds_sum", method=INFER) > 0
    # every stage of a sealed call was timed; audit appends at least once per answered call
    for stage in ("open", "infer", "seal"):
        assert moved("veil_stage_duration_seconds_count", stage=stage) >= 4, stage
    assert moved("veil_stage_duration_seconds_count", stage="audit_append") >= 5
    # scrape-time gauges: one per call class, and the queue for worker threads
    for kind in ("open", "upload", "inference", "training", "sealed", "reflection"):
        assert ("veil_calls_in_flight", frozenset({("call_class", kind)})) in after
    assert ("veil_queue_depth", frozenset()) in after
    assert SECRET_MODEL not in text and str(SECRET_INPUT) not in text
    assert TENANT_KEYS["default"] not in text


def test_metrics_are_off_by_default(served: Served) -> None:
    telemetry = served.running.telemetry
    assert telemetry.metrics is None and telemetry.tracer is None and not telemetry.enabled
    assert telemetry.metrics_address is None


def test_budget_spent_gauge_reads_the_ledger(data_dir: Path) -> None:
    _append_config(data_dir, '[metrics]\naddress = "127.0.0.1:0"')
    served = start(data_dir)
    try:
        ledger = served.enclave.training.ledger
        ledger.charge("default", "ab" * 32, _plan(1.25, 2e-6), job_id="j1")
        ledger.charge("acme", "cd" * 32, _plan(0.5, 1e-6), job_id="j2")
        ledger.charge("intruder", "ef" * 32, _plan(0.5, 1e-6), job_id="j3")  # not configured
        address = served.running.telemetry.metrics_address
        assert address is not None
        samples = _samples(_scrape(address))
    finally:
        served.running.stop(grace=None)
    assert _value(samples, "veil_privacy_epsilon_spent", tenant="default") == 1.25
    assert _value(samples, "veil_privacy_delta_spent", tenant="default") == 2e-6
    assert _value(samples, "veil_privacy_epsilon_spent", tenant="acme") == 0.5
    assert ("veil_privacy_epsilon_spent", frozenset({("tenant", "intruder")})) not in samples


# -- traces -------------------------------------------------------------------------------


@pytest.fixture
def traced(data_dir: Path) -> Iterator[tuple[Served, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = ServerConfig.load(data_dir)
    tee = SimulatedSnp.load_or_create(data_dir)
    telemetry = Telemetry(config.observability, tenants=config.tenants, tracer_provider=provider)
    running = create_server(Enclave(config, tee), telemetry=telemetry)
    served = Served(running=running, data_dir=data_dir, root_pem=tee.root_pem, calls=None)  # type: ignore[arg-type]
    try:
        yield served, exporter
    finally:
        running.stop(grace=None)
        provider.shutdown()


def test_spans_per_call_and_stage_carry_no_sealed_names(
    traced: tuple[Served, InMemorySpanExporter],
) -> None:
    served, exporter = traced
    with served.client() as client:
        _sealed_calls(client, infers=2)
    spans: tuple[ReadableSpan, ...] = exporter.get_finished_spans()
    infers = [s for s in spans if s.name == INFER]
    assert len(infers) == 2
    for rpc in infers:
        assert rpc.attributes is not None and rpc.context is not None
        assert rpc.attributes["veil.tenant"] == "default"
        assert rpc.attributes["rpc.service"] == "veil.v1.InferenceService"
        assert rpc.attributes["rpc.grpc.status_code"] == 0
        children = {
            s.name
            for s in spans
            if s.parent is not None and s.parent.span_id == rpc.context.span_id
        }
        assert children == {"open", "infer", "audit_append", "seal"}
        assert all(
            s.context is not None and s.context.trace_id == rpc.context.trace_id
            for s in spans
            if s.name in children and s.parent == rpc.context
        )
    assert any(s.name == "veil.v1.AttestationService/GetAttestation" for s in spans)
    dumped = "".join(s.to_json() for s in spans)
    assert SECRET_MODEL not in dumped and str(SECRET_INPUT) not in dumped
    assert TENANT_KEYS["default"] not in dumped


def test_failed_stage_span_names_the_error_type_only(
    traced: tuple[Served, InMemorySpanExporter],
) -> None:
    served, exporter = traced
    with served.client() as client, pytest.raises(RemoteError):
        client.infer(SECRET_MODEL, {"x": np.zeros((1, 4), dtype=np.float32)})  # not uploaded
    spans = exporter.get_finished_spans()
    infer = next(s for s in spans if s.name == "infer")
    assert infer.attributes is not None and infer.attributes["error.type"] == "NotFound"
    assert not infer.events  # no exception event: its message could name the model
    rpc = next(s for s in spans if s.name == INFER)
    assert rpc.attributes is not None and rpc.attributes["rpc.grpc.status_code"] == 5
    assert SECRET_MODEL not in "".join(s.to_json() for s in spans)


# -- logs ---------------------------------------------------------------------------------


def test_json_log_lines_parse() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("info", "json", stream=stream)
        log = logging.getLogger("veil.enclave.test")
        log.info('two\nlines and a quote " and é')
        log.debug("below the level")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == 'two\nlines and a quote " and é'
    assert first["level"] == "INFO" and first["logger"] == "veil.enclave.test"
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["exception"]
    with pytest.raises(ConfigError, match="log level"):
        configure_logging("loud", "json", stream=stream)
    with pytest.raises(ConfigError, match="log format"):
        configure_logging("info", "xml", stream=stream)


# -- reflection ---------------------------------------------------------------------------


def _reflect(address: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = stub.ServerReflectionInfo(iter([request]), timeout=10)
        return [s.name for r in responses for s in r.list_services_response.service]


def test_reflection_is_refused_by_default(served: Served) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _reflect(served.address)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_reflection_when_turned_on(data_dir: Path) -> None:
    text = (data_dir / "config.toml").read_text().replace("[server]", "[server]\nreflection = true")
    (data_dir / "config.toml").write_text(text)
    served = start(data_dir)
    try:
        assert "veil.v1.InferenceService" in _reflect(served.address)
    finally:
        served.running.stop(grace=None)


# -- configuration ------------------------------------------------------------------------


def _load(data_dir: Path, extra: str) -> ServerConfig:
    _append_config(data_dir, extra)
    return ServerConfig.load(data_dir)


def test_observability_config_and_measurement(data_dir: Path) -> None:
    plain = ServerConfig.load(data_dir)
    assert plain.observability == ObservabilityConfig() and plain.reflection is False
    on = _load(
        data_dir,
        '[metrics]\naddress = "[::1]:9464"\n[tracing]\nexporter = "otlp"\nsample_ratio = 0.5\n'
        '[logging]\nformat = "json"',
    )
    assert on.observability.metrics_host_port == ("::1", 9464)
    assert on.observability.tracing is TraceExporter.OTLP
    assert on.observability.log_format.value == "json"
    # whether anything leaves the enclave is part of what clients attest
    assert plain.canonical() != on.canonical() and b"metrics=on" in on.canonical()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ('[metrics]\naddress = "nohost"', "metrics.address"),
        ('[metrics]\naddress = "127.0.0.1:99999"', "metrics.address"),
        ("[metrics]\nport = 9464", "unknown keys"),
        ('[tracing]\nexporter = "jaeger"', "tracing.exporter"),
        ("[tracing]\nsample_ratio = 2", "sample_ratio"),
        ('[logging]\nformat = "xml"', "logging.format"),
        ('[server]\nreflection = "yes"', "server.reflection"),
    ],
)
def test_bad_observability_config_names_the_key(data_dir: Path, extra: str, match: str) -> None:
    if extra.startswith("[server]"):
        path = data_dir / "config.toml"
        path.write_text(path.read_text().replace("[server]", extra))
        with pytest.raises(ConfigError, match=match):
            ServerConfig.load(data_dir)
        return
    with pytest.raises(ConfigError, match=match):
        _load(data_dir, extra)


def test_console_exporter_provider_exports_spans(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ObservabilityConfig(tracing=TraceExporter.CONSOLE)
    telemetry = Telemetry(config, tenants={"default"})
    assert telemetry.tracer is not None
    telemetry.tracer.start_span("probe").end()
    telemetry.close()  # flushes the batch processor
    out = capsys.readouterr().out
    assert '"name": "probe"' in out and "veil-enclave" in out


# -- the budget model ---------------------------------------------------------------------


def _plan(epsilon: float, delta: float) -> TrainingPlan:
    return TrainingPlan(1.0, 0.01, 20, 100, delta, epsilon, AccountantKind.PRV)


@pytest.mark.parametrize("epsilons", [[3.0, 3.0, 3.0, 1.0], [0.5] * 20, [0.1, 4.0, 2.5, 0.3, 3.1]])
def test_default_delta_never_limits_before_epsilon(tmp_path: Path, epsilons: list[float]) -> None:
    ledger = BudgetLedger(tmp_path / "ledger.sqlite", default_budget=BudgetConfig())
    for i, eps in enumerate(epsilons):
        status = ledger.status("t", "d" * 64)
        ledger.charge("t", "d" * 64, _plan(eps, status.delta_share(eps)), job_id=str(i))
    status = ledger.status("t", "d" * 64)
    assert status.spent_epsilon == pytest.approx(sum(epsilons))
    assert status.spent_delta <= status.budget_delta
    info = BudgetInfo(
        status.budget_epsilon,
        status.spent_epsilon,
        status.remaining_epsilon,
        status.budget_delta,
        status.spent_delta,
    )
    assert info.limited_by == "epsilon"
    # the next job is refused for epsilon, not delta
    left = status.remaining_epsilon
    with pytest.raises(PrivacyBudgetExceeded, match="needs epsilon"):
        ledger.charge("t", "d" * 64, _plan(left + 0.5, status.delta_share(left + 0.5)), job_id="x")


def test_default_budget_fits_as_many_jobs_as_epsilon_allows(served: Served) -> None:
    # README's situation: the default budget (epsilon 10, delta 1e-5), jobs that leave delta
    # to the enclave. Three jobs at epsilon 3 fit; the fourth is refused for epsilon.
    from sklearn.datasets import load_digits

    digits = load_digits()
    buf = io.BytesIO()
    np.savez(buf, x=(digits.data[:256] / 16.0).astype(np.float32), y=digits.target[:256])
    deltas = []
    with served.client() as client:
        dataset = client.upload_dataset(buf.getvalue(), format="npz")
        for _ in range(3):
            before = client.budget(dataset)
            job = client.train(dataset, "logreg", target_epsilon=3.0, epochs=1, seed=1)
            outcome = job.result()
            share = before.delta_remaining * 3.0 / before.epsilon_remaining
            assert outcome.record["delta"] == pytest.approx(share, rel=1e-6)
            deltas.append(outcome.record["delta"])
        left = client.budget(dataset)
        assert left.limited_by == "epsilon" and left.delta_remaining > 0
        assert left.epsilon_remaining < 3.0 and not left.allows(epsilon=3.0)
        assert left.allows(epsilon=left.epsilon_remaining)
        with pytest.raises(PrivacyBudgetExceeded) as err:
            client.train(dataset, "logreg", target_epsilon=3.0, epochs=1, seed=1).result()
        assert err.value.remaining_epsilon == pytest.approx(left.epsilon_remaining)
    assert sum(deltas) <= 1e-5
    print(f"deltas of three default jobs: {deltas}", file=sys.stderr)
