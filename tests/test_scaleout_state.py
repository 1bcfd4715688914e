"""Shared state in a real PostgreSQL: the replay guard across replicas, the budget ledger."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres_support import PostgresServer, postgres_server

from veil.enclave._replay import ReplayError, StaleRequestError
from veil.enclave.scaleout._pg import PostgresPool, PostgresReplayStore, StateUnavailable
from veil.privacy import AccountantKind, BudgetConfig, PostgresBudgetLedger, TrainingPlan
from veil.sdk.errors import ConfigError, PrivacyBudgetExceeded

__all__ = ["postgres_server"]  # the session fixture, imported for pytest

DIGEST = "ab" * 32
NOW = 1_800_000_000_000


def plan(eps: float, *, delta: float = 1e-9, steps: int = 40) -> TrainingPlan:
    return TrainingPlan(1.0, 0.05, 20, steps, delta, eps, AccountantKind.PRV)


@pytest.fixture
def db(postgres_server: PostgresServer) -> str:
    return postgres_server.fresh_database()


def test_replay_accepted_by_one_store_is_refused_by_another(db: str) -> None:
    a = PostgresReplayStore(PostgresPool(db), 30_000)
    b = PostgresReplayStore(PostgresPool(db), 30_000)
    a.check(b"\x01" * 16, NOW, NOW)
    with pytest.raises(ReplayError):
        b.check(b"\x01" * 16, NOW, NOW + 5)
    with pytest.raises(ReplayError):
        a.check(b"\x01" * 16, NOW, NOW + 5)
    b.check(b"\x02" * 16, NOW, NOW)  # another id is fine
    with pytest.raises(StaleRequestError):
        a.check(b"\x03" * 16, NOW - 31_000, NOW)
    assert len(a) == 2


def test_replay_race_between_replicas_accepts_exactly_one(db: str) -> None:
    stores = [PostgresReplayStore(PostgresPool(db), 30_000) for _ in range(4)]
    outcomes: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            stores[i % 4].check(b"\x07" * 16, NOW, NOW)
            ok = True
        except ReplayError:
            ok = False
        with lock:
            outcomes.append(ok)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(attempt, range(8)))
    assert sorted(outcomes) == [False] * 7 + [True]


def test_expired_ids_are_swept(db: str) -> None:
    store = PostgresReplayStore(PostgresPool(db), 1_000)
    for i in range(5):
        store.check(bytes([i]) * 16, NOW, NOW)
    assert len(store) == 5
    store.check(b"\xff" * 16, NOW + 5_000, NOW + 5_000)  # a later request sweeps the expired
    assert len(store) == 1


def test_unreachable_database_is_a_typed_refusal(postgres_server: PostgresServer) -> None:
    with pytest.raises(StateUnavailable, match="shared state failed"):
        PostgresPool(f"postgresql://veil@127.0.0.1:{postgres_server.port}/no_such_db")
    with pytest.raises(ConfigError):
        PostgresPool("sqlite:///x")


def test_ledger_charges_settles_and_is_shared(db: str) -> None:
    a = PostgresBudgetLedger(db, default_budget=BudgetConfig(5.0, 1e-5))
    b = PostgresBudgetLedger(db, default_budget=BudgetConfig(100.0, 1e-5))
    charge = a.charge("t", DIGEST, plan(2.0), job_id="j1")
    # replica b sees a's charge, and the budget fixed at the first charge (5, not 100)
    status = b.status("t", DIGEST)
    assert (status.budget_epsilon, status.spent_epsilon) == (5.0, 2.0)
    with pytest.raises(PrivacyBudgetExceeded) as info:
        b.charge("t", DIGEST, plan(3.5), job_id="j2")
    assert info.value.remaining_epsilon == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="already charged"):
        b.charge("t", DIGEST, plan(0.5), job_id="j1")  # one charge per job, across replicas
    settled = b.settle(charge.id, steps_started=0)
    assert (settled.epsilon, settled.delta, settled.settled) == (0.0, 0.0, True)
    with pytest.raises(ConfigError, match="already settled"):
        a.settle(charge.id, steps_started=0)
    assert [c.job_id for c in a.charges("t", DIGEST)] == ["j1"]
    assert b.spent_by_tenant() == {"t": (0.0, 0.0)}


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    budget=st.floats(1.0, 5.0),
    amounts=st.lists(st.floats(0.05, 2.5), min_size=4, max_size=16),
)
def test_concurrent_charges_on_two_replicas_never_exceed_budget(
    postgres_server: PostgresServer, budget: float, amounts: list[float]
) -> None:
    url = postgres_server.fresh_database()
    replicas = [
        PostgresBudgetLedger(url, default_budget=BudgetConfig(budget, 1.0 - 1e-9)) for _ in range(2)
    ]
    accepted: list[float] = []
    refused: list[tuple[float, float]] = []
    lock = threading.Lock()
    start = threading.Barrier(min(8, len(amounts)))

    def job(i: int, amount: float) -> None:
        if i < 8:
            start.wait()
        try:
            replicas[i % 2].charge("t", DIGEST, plan(amount, delta=1e-12), job_id=f"j{i}")
        except PrivacyBudgetExceeded as exc:
            assert exc.remaining_epsilon is not None
            with lock:
                refused.append((amount, exc.remaining_epsilon))
        else:
            with lock:
                accepted.append(amount)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(job, range(len(amounts)), amounts))
    spent = replicas[0].status("t", DIGEST).spent_epsilon
    assert spent <= budget
    assert spent == pytest.approx(sum(accepted))
    assert len(accepted) + len(refused) == len(amounts)
    for amount, remaining in refused:
        assert amount > remaining
        assert amount > budget - spent


def _charge_many(url: str, n: int, amount: float, out: multiprocessing.Queue[int]) -> None:
    ledger = PostgresBudgetLedger(url)
    ok = 0
    for i in range(n):
        try:
            ledger.charge("t", DIGEST, plan(amount), job_id=f"{os.getpid()}-{i}")
            ok += 1
        except PrivacyBudgetExceeded:
            pass
    out.put(ok)


def test_concurrent_processes_never_exceed_budget(db: str) -> None:
    PostgresBudgetLedger(db)  # default budget: epsilon 10
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=_charge_many, args=(db, 12, 0.3, out)) for _ in range(4)]
    for p in procs:
        p.start()
    accepted = sum(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    spent = PostgresBudgetLedger(db).status("t", DIGEST).spent_epsilon
    assert accepted == 33  # floor(10 / 0.3): exactly as many as fit, no more, no fewer
    assert spent == pytest.approx(33 * 0.3) and spent <= 10.0


def test_model_registry_is_shared_and_never_reuses_a_version(db: str, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from enclave_support import mlp_model

    from veil.enclave._admission import validate_onnx
    from veil.enclave._errors import NotFound
    from veil.enclave._limits import Limits
    from veil.enclave.scaleout._registry import PostgresModelStore

    volume = tmp_path / "models"  # the shared volume both replicas mount

    def replica() -> PostgresModelStore:
        return PostgresModelStore(
            volume,
            PostgresPool(db),
            storage_key=lambda tenant: b"\x07" * 32,
            clock=lambda: datetime.now(UTC),
        )

    a, b = replica(), replica()
    data = mlp_model()
    validated = validate_onnx(data, max_bytes=1 << 20, allowed_domains=[""], limits=Limits())
    with ThreadPoolExecutor(6) as pool:  # six uploads of one name through two replicas at once
        versions = sorted(
            r.version
            for r in pool.map(lambda i: (a, b)[i % 2].register("t", "m", data, validated), range(6))
        )
    assert versions == [1, 2, 3, 4, 5, 6]
    assert b.load(b.resolve("t", "m@3")) == data  # registered through a, opened through b
    assert [r.ref for r in a.delete("t", "m@6")] == ["m@6"]
    with pytest.raises(NotFound):
        b.resolve("t", "m@6")  # deleted through a: gone for b at once
    assert b.resolve("t", "m").version == 5
    assert not (volume / "t" / "m" / "v6.onnx.enc").exists()
    assert b.register("t", "m", data, validated).version == 7  # 6 is never reused
    assert [r.version for r in a.records("t")] == [1, 2, 3, 4, 5, 7]
    with pytest.raises(NotFound):
        a.delete("t", "absent")
    # the database holds metadata only: digests, sizes, signatures, never the model
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT record FROM veil_models").fetchall()
    assert all(bytes(data[:64]).hex() not in r[0] for r in rows)
    assert {json.loads(r[0])["sha256"] for r in rows} == {hashlib.sha256(data).hexdigest()}
