"""Three attested replicas, a coordinator and PostgreSQL on loopback (docs/SCALE-OUT.md).

Each part runs as the command a user runs, in its own process. Shown: the shared keys only
reach replicas whose evidence the manifest allows; any replica opens a request sealed after
attesting another; a request id accepted by one is refused by the others; a client load through
an L4 balancer spreads over the replicas, survives a replica SIGKILLed mid-run and key rotations
without a failed call; concurrent DP jobs on two replicas never overspend the shared budget.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from enclave_support import mlp_model
from postgres_support import PostgresServer, postgres_server
from scaleout_support import Deployment, L4Balancer

from veil.enclave.scaleout import KeyReleaseRefused, Replica, ReplicaSettings
from veil.enclave.tee._simulated import SimulatedSnp
from veil.sdk import AttestationPolicy, PrivacyBudgetExceeded, RemoteError
from veil.sdk._audit_client import attestation_check
from veil.sdk._core import ClientCore
from veil.sdk.attestation import parse_policy
from veil.sdk.audit.merge import merge_exports, verify_merged_export
from veil.sdk.errors import AuditLogError
from veil.sdk.protocol import Method
from veil.sdk.replicas import policy_for
from veil.v1 import inference_pb2, inference_pb2_grpc

__all__ = ["postgres_server"]

X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)


@pytest.fixture(scope="module")
def deployment(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    d = Deployment(tmp_path_factory.mktemp("deploy"), postgres_server.fresh_database())
    try:
        d.start_coordinator()
        for name in ("r1", "r2", "r3"):
            d.launch_replica(name)
        for process in d.replicas.values():
            process.wait_serving()
        with d.client(d.replicas["r1"].address) as client:
            client.upload_model(mlp_model(), "m")
        yield d
    finally:
        d.stop()


def _expected(seed: int = 0) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(mlp_model(seed=seed), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["probs"], {"x": X})[0])


def test_replica_with_a_wrong_measurement_is_refused_its_keys(deployment: Deployment) -> None:
    # Another configuration is another measurement, which the manifest does not allow.
    rogue = deployment.launch_replica(
        "rogue", extra_config="max_dataset_bytes = 1234\n", register=False
    )
    assert rogue.wait_exit() != 0
    assert "serving on" not in rogue.output
    assert "key release refused" in rogue.output and "measurement" in rogue.output
    assert deployment.coordinator is not None
    assert "key release refused: replica ? measurement" in deployment.coordinator.output
    # The same refusal in process: nothing was released to it.
    policy_file = deployment.root / "coordinator-policy.toml"
    replica = Replica(
        ReplicaSettings(
            coordinator=deployment.coordinator.address,
            coordinator_policy=policy_for(parse_policy(policy_file.read_bytes())),
            coordinator_policy_sha256=hashlib.sha256(policy_file.read_bytes()).digest(),
            database_url=deployment.database_url,
            replica_id="rogue2",
        )
    )
    tee = SimulatedSnp.load_or_create(deployment.platform)
    try:
        with pytest.raises(KeyReleaseRefused, match="measurement"):
            replica.join(tee, measurement=b"\x07" * 48, log_key=b"\x01" * 32, log_origin="x")
        assert replica.keys is None and replica.model_key == b"" and replica.certificate == b""
    finally:
        replica.close()


def test_client_attests_the_coordinator_and_the_replica_it_reaches(
    deployment: Deployment,
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from veil.sdk import AttestationError
    from veil.sdk.replicas import attest_coordinator

    assert deployment.coordinator is not None
    owner = ed25519.Ed25519PublicKey.from_public_bytes((deployment.root / "owner.pub").read_bytes())
    policy = AttestationPolicy.simulated_for_tests(
        deployment.root_pem, measurements=[deployment.coordinator_measurement]
    )
    now = datetime.now(UTC)
    coordinator = attest_coordinator(
        deployment.coordinator.address, policy=policy, owner=owner, now=now
    )
    assert coordinator.manifest.sha256 == deployment.manifest_sha256
    assert coordinator.manifest.attestation_policy.expected_measurements == {deployment.measurement}
    with deployment.client(deployment.replicas["r2"].address) as client:
        assert coordinator.vouches_for(client.attest())
    stranger = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(AttestationError, match="manifest signature"):
        attest_coordinator(deployment.coordinator.address, policy=policy, owner=stranger, now=now)
    other = AttestationPolicy.simulated_for_tests(deployment.root_pem, measurements=[b"\x01" * 48])
    with pytest.raises(AttestationError, match="measurement"):
        attest_coordinator(deployment.coordinator.address, policy=other, owner=owner, now=now)


def test_veil_measure_prints_what_the_manifest_pins(deployment: Deployment) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "veil.sdk.cli",
            "measure",
            "--json",
            "--data-dir",
            str(deployment.template),
            "--coordinator-policy",
            str(deployment.root / "coordinator-policy.toml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["measurement"] == deployment.measurement.hex()


def test_replica_refuses_a_coordinator_outside_its_policy(deployment: Deployment) -> None:
    assert deployment.coordinator is not None
    other = (
        (deployment.root / "coordinator-policy.toml")
        .read_text()
        .replace(deployment.coordinator_measurement.hex(), "ab" * 48)
    )
    replica = Replica(
        ReplicaSettings(
            coordinator=deployment.coordinator.address,
            coordinator_policy=policy_for(parse_policy(other.encode())),
            coordinator_policy_sha256=hashlib.sha256(other.encode()).digest(),
            database_url=deployment.database_url,
            replica_id="trusting",
        )
    )
    tee = SimulatedSnp.load_or_create(deployment.platform)
    try:
        with pytest.raises(Exception, match="measurement"):
            replica.join(
                tee, measurement=deployment.measurement, log_key=b"\x01" * 32, log_origin="x"
            )
        assert replica.keys is None and replica.model_key == b""
    finally:
        replica.close()


def test_any_replica_opens_and_a_replay_is_refused_by_every_other(
    deployment: Deployment,
) -> None:
    r1, r2, r3 = (deployment.replicas[n].address for n in ("r1", "r2", "r3"))
    with deployment.client(r1) as client:
        core: ClientCore = client._core
        enclave = client.attest()
        assert enclave.claims.manifest_sha256 == deployment.manifest_sha256
        request = ClientCore.infer_request("m", {"x": X}, None)
        call = core.seal(enclave, Method.INFER, request)
        # sealed after attesting r1, answered by r2: the key epochs are shared
        with grpc.insecure_channel(r2) as channel:
            response = inference_pb2_grpc.InferenceServiceStub(channel).Infer(call.request)
        result = core.open(enclave, call, response, inference_pb2.InferResponse())
        probs = ClientCore.infer_result(result)["probs"]
        np.testing.assert_allclose(probs, _expected(), rtol=1e-5)
        assert core.answered_by[-1].replica == "r2"  # receipt verified under r2's log key
        # the same request again, at r3 and at r1: replays
        for target in (r3, r1, r2):
            with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as info:
                inference_pb2_grpc.InferenceServiceStub(channel).Infer(call.request)
            assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert dict(info.value.trailing_metadata() or ())["veil-reason"] == "replay"


def test_merged_export_of_the_replicas_logs_verifies(
    deployment: Deployment, tmp_path: Path
) -> None:
    exports = []
    for name in ("r1", "r2"):
        with deployment.client(deployment.replicas[name].address) as client:
            client.infer("m", {"x": X})
            exports.append(client.export_audit(tmp_path / name))
    merged = merge_exports(exports, tmp_path / "merged")
    check = attestation_check(deployment.policy(), now=lambda: datetime.now(UTC))
    result = verify_merged_export(merged, attestation_check=check)
    assert sorted(e.checkpoint.origin for e in result.replicas) == [
        "veil-replica-r1/default",
        "veil-replica-r2/default",
    ]
    assert result.entry_count == sum(e.entry_count for e in result.replicas) >= 2
    times = [record.time for _, _, record in result.entries()]
    assert times == sorted(times)
    # `veil audit verify` checks each log under its attested key, and the merge
    root = deployment.root / "root.pem"
    root.write_bytes(deployment.root_pem)
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "veil.sdk.cli",
            "audit",
            "verify",
            str(merged),
            "--trust-root",
            str(root),
            "--expect-measurement",
            deployment.measurement.hex(),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "verified the merge of 2 replica logs" in cli.stdout
    # a dropped line, or one replica's certificate passed off as the other's: refused
    lines = (merged / "merged.jsonl").read_text().splitlines()
    (merged / "merged.jsonl").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(AuditLogError, match=r"merged\.jsonl line 1"):
        verify_merged_export(merged, attestation_check=check)
    (merged / "merged.jsonl").write_text("\n".join(lines) + "\n")
    first, second = (merged / "replicas" / n / "attestation" / "replica.pb" for n in "01")
    first.write_bytes(second.read_bytes())
    with pytest.raises(AuditLogError, match="swapped key"):
        verify_merged_export(merged, attestation_check=check)


def _load(
    target: str,
    deployment: Deployment,
    stop: threading.Event,
    out: dict[str, object],
    lock: threading.Lock,
) -> None:
    ok = retries = 0
    key_ids: set[str] = set()
    expected = _expected()
    with deployment.client(target) as client:
        while not stop.is_set():
            for attempt in range(8):
                try:
                    probs = client.infer("m", {"x": X})["probs"]
                    break
                except RemoteError as exc:  # the client's retry: a fresh seal, a new request id
                    if exc.code != "UNAVAILABLE" or attempt == 7:
                        raise
                    retries += 1
                    time.sleep(0.2)
            np.testing.assert_allclose(probs, expected, rtol=1e-5)
            ok += 1
            assert client._core.attested is not None
            key_ids.add(client._core.attested.key_id)
        replicas = Counter(i.replica for i in client.answered_by)
    with lock:
        out["ok"] = int(out.get("ok", 0)) + ok  # type: ignore[call-overload]
        out["retries"] = int(out.get("retries", 0)) + retries  # type: ignore[call-overload]
        out.setdefault("replicas", Counter()).update(replicas)  # type: ignore[attr-defined]
        out.setdefault("key_ids", set()).update(key_ids)  # type: ignore[attr-defined]


def test_load_spreads_survives_a_sigkill_and_key_rotation(deployment: Deployment) -> None:
    balancer = L4Balancer([p.address for p in deployment.replicas.values()], listeners=6)
    stop = threading.Event()
    out: dict[str, object] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(address: str) -> None:
        try:
            _load(address, deployment, stop, out, lock)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in balancer.addresses]
    for t in threads:
        t.start()
    time.sleep(4)
    deployment.replicas["r3"].kill()  # mid-run, calls in flight
    time.sleep(deployment.epoch_seconds + 1)  # every client outlives its first key epoch
    stop.set()
    for t in threads:
        t.join(60)
    balancer.close()
    counts = out.get("replicas", Counter())
    print(
        f"\nper-replica answers: {dict(sorted(counts.items()))}; "  # type: ignore[attr-defined]
        f"calls {out.get('ok')}, retries after the kill {out.get('retries')}, "
        f"key epochs used {len(out.get('key_ids', ()))}"
    )  # type: ignore[arg-type]
    assert not errors, errors[0]
    assert isinstance(counts, Counter)
    assert len([r for r in ("r1", "r2", "r3") if counts[r] > 0]) >= 2
    assert sum(counts.values()) == out["ok"]
    assert len(out["key_ids"]) >= 2  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits_npz() -> bytes:
    from sklearn.datasets import load_digits

    digits = load_digits()
    buf = io.BytesIO()
    x = (digits.data[:256] / 16.0).astype(np.float32)
    np.savez(buf, x=x, y=digits.target[:256].astype(np.int64))
    return buf.getvalue()


def test_concurrent_dp_jobs_on_two_replicas_never_overspend(
    deployment: Deployment, digits_npz: bytes
) -> None:
    r1, r2 = deployment.replicas["r1"].address, deployment.replicas["r2"].address
    with deployment.client(r1) as client:
        dataset = client.upload_dataset(digits_npz, format="npz")
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def job(target: str, name: str) -> None:
        with deployment.client(target) as client:
            client.attest()
            barrier.wait()
            try:
                client.train(
                    dataset.sha256, "logreg", target_epsilon=2.0, epochs=1, name=name, seed=1
                ).result()
                result = "trained"
            except PrivacyBudgetExceeded:
                result = "refused"
            except Exception as exc:
                result = repr(exc)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=job, args=(t, f"j{i}")) for i, t in enumerate((r1, r2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    # budget 3.0, two jobs of 2.0 on two replicas: exactly one is admitted
    assert sorted(outcomes) == ["refused", "trained"]
    with deployment.client(r2) as client:
        budget = client.budget(dataset.sha256)
    assert budget.epsilon_budget == deployment.budget_epsilon
    assert 0 < budget.epsilon_spent <= 2.0  # one job's charge (settled), never both
