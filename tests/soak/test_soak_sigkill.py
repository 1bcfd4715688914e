"""SIGKILL the server mid-upload, mid-training and under load; nothing acknowledged is lost.

Each scenario gives clients receipts, kills the server with ``kill -9`` while work is in flight,
restarts it on the same data directory and checks that

* it starts;
* no temporary file is left in the data directory once it has started;
* every receipt a client was given before the kill is provable: each tenant's log is exported
  from the restarted server and verified offline (attestation evidence, signed checkpoint, the
  entries reproduce the signed tree), every receipt's leaf must be the exported line at its
  index, and a sample is also proven online with inclusion proofs;
* the restarted server serves: an inference works, a half-uploaded model is not listed.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from enclave_support import TENANT_KEYS, mlp_model
from sklearn.datasets import load_digits

from soak.load_worker import LoadSpec
from soak.soak_support import (
    LoadFleet,
    MiB,
    VeilServer,
    assert_none,
    big_dataset,
    big_model,
    bytes_received,
    make_data_dir,
    prove_receipts,
    read_receipts,
    temp_files,
)
from veil.sdk import RemoteError, TrainingOutcome, TrainingProgress
from veil.sdk.audit import Receipt

pytestmark = [pytest.mark.soak, pytest.mark.filterwarnings("ignore::veil.sdk.InsecureModeWarning")]

X = {"x": np.zeros((2, 4), np.float32)}
UPLOAD_MIB = 48
LOAD_CLIENTS = 8
LOAD_SECONDS_BEFORE_KILL = 8.0


def _restart_and_prove(
    server: VeilServer,
    receipts: dict[str, list[Receipt]],
    tmp_path: Path,
    figures: Callable[[str, object], None],
) -> list[str]:
    """Restart ``server`` after its kill; what is wrong with it afterwards (empty: nothing)."""
    assert not server.alive()
    left = temp_files(server.data_dir)
    figures("temp files left by the kill", len(left))
    server.start()
    figures("restart to serving (s)", server.start_seconds)
    after = temp_files(server.data_dir)
    # A file the new process wrote since (same name, new inode or time) is its own business.
    kept = [p for p, identity in left.items() if after.get(p) == identity]
    figures("of them still there after start-up", len(kept))
    problems = [f"temporary file left by the crash survived start-up: {p}" for p in kept]
    total = 0
    for tenant, got in receipts.items():
        if not got:
            continue
        proven = prove_receipts(server, tenant, got, tmp_path / f"export-{tenant}")
        problems.extend(f"{tenant}: {failure}" for failure in proven.failures[:5])
        total += proven.receipts
    figures("receipts proven", total)
    with server.client() as client:
        client.infer("m", X)
    return problems


def _serve_with_receipts(server: VeilServer) -> dict[str, list[Receipt]]:
    """Both tenants upload model ``m`` and infer a few times; their receipts."""
    receipts = {}
    for tenant in TENANT_KEYS:
        with server.client(tenant) as client:
            client.upload_model(mlp_model(), "m")
            for _ in range(3):
                client.infer("m", X)
            receipts[tenant] = client.receipts
    return receipts


def test_sigkill_during_large_uploads(
    tmp_path: Path, tee_template: Path, figures: Callable[[str, object], None]
) -> None:
    data = make_data_dir(tmp_path / "data", tee_template)
    model, dataset = big_model(UPLOAD_MIB), big_dataset(UPLOAD_MIB)
    with VeilServer(data, tmp_path / "server.log") as server:
        receipts = _serve_with_receipts(server)
        problems: list[str] = []
        done: list[str] = []

        def upload(kind: str) -> None:
            with server.client("acme", timeout=120.0) as client:
                try:
                    if kind == "model":
                        client.upload_model(model, "big")
                    else:
                        client.upload_dataset(dataset, format="npz")
                    done.append(kind)
                except RemoteError:
                    pass  # the kill cut it off: expected
                finally:
                    receipts["acme"] += client.receipts

        threads = [threading.Thread(target=upload, args=(kind,)) for kind in ("model", "dataset")]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        # Kill once one upload's connection has carried half its size into the server (both
        # uploads are then in flight), or after 60 s, whichever comes first.
        received = 0
        while time.monotonic() - began < 60.0 and received < UPLOAD_MIB * MiB // 2:
            time.sleep(0.01)
            received = bytes_received(server.address)
        server.kill()
        figures("killed after (s)", time.monotonic() - began)
        figures("MiB one upload had sent at the kill", received / MiB)
        for thread in threads:
            thread.join(180)
        figures("uploads finished before the kill", ",".join(done) or "none")
        if len(done) == 2:
            problems.append("both uploads finished before the kill: it did not land mid-upload")
        problems += _restart_and_prove(server, receipts, tmp_path, figures)
        with server.client("acme") as client:
            listed = [m.ref for m in client.list_models()]
        if "model" not in done and any(ref.startswith("big@") for ref in listed):
            problems.append(f"a model whose upload was killed is listed: {listed}")
        code = server.terminate(timeout=30.0)
    assert_none(problems)
    assert code == 0, f"SIGTERM after restart: exit code {code}"


def test_sigkill_during_training(
    tmp_path: Path, tee_template: Path, figures: Callable[[str, object], None]
) -> None:
    digits = load_digits()
    buf = io.BytesIO()
    np.savez(buf, x=(digits.data / 16.0).astype(np.float32), y=digits.target.astype(np.int64))
    data = make_data_dir(tmp_path / "data", tee_template)
    with VeilServer(data, tmp_path / "server.log") as server:
        receipts = _serve_with_receipts(server)
        started = threading.Event()
        events: list[object] = []
        with server.client(timeout=120.0) as client:
            dataset = client.upload_dataset(buf.getvalue(), format="npz")
            before = client.budget(dataset)
            job = client.train(
                dataset, "logreg", target_epsilon=2.0, epochs=200, batch_size=32, name="t", seed=1
            )

            def follow() -> None:
                try:
                    for event in job.stream():
                        events.append(event)
                        started.set()
                except Exception as exc:
                    events.append(exc)
                finally:
                    started.set()

            thread = threading.Thread(target=follow)
            thread.start()
            assert started.wait(120), "training made no progress in 120 s"
            time.sleep(0.5)
            server.kill()
            thread.join(60)
            receipts["default"] += client.receipts
        progress = [e for e in events if isinstance(e, TrainingProgress)]
        figures("progress events before the kill", len(progress))
        assert progress, f"no progress before the kill: {events[:1]}"
        assert not any(isinstance(e, TrainingOutcome) for e in events), (
            "training finished before the kill: the kill did not land during training"
        )
        problems = _restart_and_prove(server, receipts, tmp_path, figures)
        with server.client(timeout=120.0) as client:
            after = client.budget(dataset)
            spent = f"{before.epsilon_spent:.3g} / {after.epsilon_spent:.3g}"
            figures("epsilon spent before the job / after restart", spent)
            # The job was charged before its first progress event: a crash must not refund it.
            if after.epsilon_spent <= before.epsilon_spent:
                problems.append(f"the killed job's charge was lost: {before} -> {after}")
            if after.epsilon_spent > after.epsilon_budget:
                problems.append(f"budget overspent after the crash: {after}")
            outcome = client.train(
                dataset, "logreg", target_epsilon=1.0, epochs=1, batch_size=64, name="u"
            ).result()
            client.infer(outcome.model.ref, {"input": np.zeros((1, 64), np.float32)})
        code = server.terminate(timeout=30.0)
    assert_none(problems)
    assert code == 0, f"SIGTERM after restart: exit code {code}"


def test_sigkill_under_inference_load(
    tmp_path: Path, tee_template: Path, figures: Callable[[str, object], None]
) -> None:
    data = make_data_dir(tmp_path / "data", tee_template)
    with VeilServer(data, tmp_path / "server.log") as server:
        receipts = _serve_with_receipts(server)
        tenants = sorted(TENANT_KEYS)
        files = [tmp_path / f"receipts-{i}.jsonl" for i in range(LOAD_CLIENTS)]
        specs = [
            LoadSpec(
                address=server.address,
                root_pem=server.root_pem(),
                tenant=tenants[i % 2],
                api_key=TENANT_KEYS[tenants[i % 2]],
                model="m",
                seconds=LOAD_SECONDS_BEFORE_KILL + 60,
                receipts_path=str(files[i]),
                stop_on_error=True,
            )
            for i in range(LOAD_CLIENTS)
        ]
        with LoadFleet(specs) as fleet:
            fleet.go()
            time.sleep(LOAD_SECONDS_BEFORE_KILL)
            server.kill()
            results, silent = fleet.results(timeout=120)
        assert silent == 0, f"{silent} load processes never reported"
        assert all(r.error_count for r in results), "a client saw no error: was the kill real?"
        loaded = 0
        for i, path in enumerate(files):
            got = read_receipts(path)
            loaded += len(got)
            receipts[tenants[i % 2]] += got
        figures("receipts under load before the kill", loaded)
        figures("requests before the kill", sum(r.requests for r in results))
        problems = _restart_and_prove(server, receipts, tmp_path, figures)
        code = server.terminate(timeout=30.0)
    assert_none(problems)
    assert code == 0, f"SIGTERM after restart: exit code {code}"
