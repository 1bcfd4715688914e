"""Budget ledger: charge before, refund only unstarted steps, persist, and never overspend."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.privacy import (
    AccountantKind,
    BudgetConfig,
    BudgetLedger,
    TrainingPlan,
    compute_epsilon,
)
from veil.sdk.errors import ConfigError, PrivacyBudgetExceeded

DIGEST = "ab" * 32


def plan(
    eps: float, *, delta: float = 1e-7, sigma: float = 1.0, q: float = 0.05, steps: int = 40
) -> TrainingPlan:
    return TrainingPlan(sigma, q, 20, steps, delta, eps, AccountantKind.PRV)


def real_plan(steps: int = 40) -> TrainingPlan:
    eps = compute_epsilon(noise_multiplier=1.0, sample_rate=0.05, steps=steps, delta=1e-7)
    return plan(eps, steps=steps)


def test_charge_within_budget_and_status(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "l.sqlite", default_budget=BudgetConfig(5.0, 1e-5))
    c = ledger.charge("t", DIGEST, plan(2.0), job_id="j1")
    assert (c.epsilon, c.settled) == (2.0, False)
    st_ = ledger.status("t", DIGEST)
    assert (st_.spent_epsilon, st_.remaining_epsilon, st_.budget_epsilon) == (2.0, 3.0, 5.0)
    # another tenant / dataset is untouched
    assert ledger.status("other", DIGEST).spent_epsilon == 0.0
    assert ledger.status("t", "cd" * 32).spent_epsilon == 0.0


def test_charge_over_epsilon_budget_raises_with_remaining(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "l.sqlite", default_budget=BudgetConfig(5.0, 1e-5))
    ledger.charge("t", DIGEST, plan(4.0), job_id="j1")
    with pytest.raises(PrivacyBudgetExceeded, match=r"needs epsilon 1\.5") as info:
        ledger.charge("t", DIGEST, plan(1.5), job_id="j2")
    assert info.value.remaining_epsilon == pytest.approx(1.0)
    assert ledger.status("t", DIGEST).spent_epsilon == 4.0  # the refused job charged nothing


def test_charge_over_delta_budget_raises(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "l.sqlite", default_budget=BudgetConfig(10.0, 1e-5))
    ledger.charge("t", DIGEST, plan(1.0, delta=6e-6), job_id="j1")
    with pytest.raises(PrivacyBudgetExceeded, match="needs delta") as info:
        ledger.charge("t", DIGEST, plan(1.0, delta=6e-6), job_id="j2")
    assert info.value.remaining_epsilon == pytest.approx(9.0)
    assert info.value.remaining_delta == pytest.approx(4e-6)


def test_default_budget_is_epsilon_10_delta_1e5(tmp_path: Path) -> None:
    st_ = BudgetLedger(tmp_path / "l.sqlite").status("t", DIGEST)
    assert (st_.budget_epsilon, st_.budget_delta) == (10.0, 1e-5)


def test_charges_persist_and_budget_is_fixed_at_first_charge(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    BudgetLedger(path, default_budget=BudgetConfig(3.0, 1e-5)).charge(
        "t", DIGEST, plan(2.5), job_id="j1"
    )
    reopened = BudgetLedger(path, default_budget=BudgetConfig(100.0, 1e-5))
    st_ = reopened.status("t", DIGEST)
    assert (st_.budget_epsilon, st_.spent_epsilon) == (3.0, 2.5)
    with pytest.raises(PrivacyBudgetExceeded):
        reopened.charge("t", DIGEST, plan(1.0), job_id="j2")
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_settle_refunds_only_steps_that_never_started(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "l.sqlite")
    full = real_plan(40)
    c = ledger.charge("t", DIGEST, full, job_id="j1")
    settled = ledger.settle(c.id, steps_started=13)
    ran = compute_epsilon(noise_multiplier=1.0, sample_rate=0.05, steps=13, delta=1e-7)
    assert settled.epsilon == pytest.approx(ran) and 0 < settled.epsilon < full.epsilon
    assert settled.delta == full.delta and settled.settled
    assert ledger.status("t", DIGEST).spent_epsilon == pytest.approx(ran)


def test_settle_after_all_steps_refunds_nothing(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "l.sqlite")
    full = real_plan(40)
    c = ledger.charge("t", DIGEST, full, job_id="j1")
    assert ledger.settle(c.id, steps_started=40).epsilon == pytest.approx(full.epsilon)
    assert ledger.status("t", DIGEST).spent_epsilon == pytest.approx(full.epsilon)


def test_settle_before_any_step_refunds_everything(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "l.sqlite")
    c = ledger.charge("t", DIGEST, real_plan(), job_id="j1")
    s = ledger.settle(c.id, steps_started=0)
    assert (s.epsilon, s.delta) == (0.0, 0.0)
    assert ledger.status("t", DIGEST).spent_delta == 0.0


def test_settle_twice_is_refused(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "l.sqlite")
    c = ledger.charge("t", DIGEST, real_plan(), job_id="j1")
    ledger.settle(c.id, steps_started=5)
    with pytest.raises(ConfigError, match="already settled"):
        ledger.settle(c.id, steps_started=0)


@pytest.mark.parametrize("steps", [-1, 41])
def test_settle_with_impossible_step_count_is_refused(tmp_path: Path, steps: int) -> None:
    ledger = BudgetLedger(tmp_path / "l.sqlite")
    c = ledger.charge("t", DIGEST, real_plan(), job_id="j1")
    with pytest.raises(ConfigError, match=r"outside 0\.\.40"):
        ledger.settle(c.id, steps_started=steps)


def test_settle_unknown_charge_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no budget charge"):
        BudgetLedger(tmp_path / "l.sqlite").settle("nope", steps_started=0)


@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf")])
def test_charge_of_invalid_epsilon_is_refused(tmp_path: Path, bad: float) -> None:
    with pytest.raises(ConfigError):
        BudgetLedger(tmp_path / "l.sqlite").charge("t", DIGEST, plan(bad), job_id="j")


def test_invalid_budget_config() -> None:
    with pytest.raises(ConfigError):
        BudgetConfig(epsilon=0.0)
    with pytest.raises(ConfigError):
        BudgetConfig(delta=1.0)


def _crash_after_charge(path: str) -> None:
    ledger = BudgetLedger(path)
    ledger.charge("t", DIGEST, plan(3.0), job_id="crashing")
    os._exit(17)  # the job's process dies before it can settle


def test_job_that_crashes_stays_fully_charged(tmp_path: Path) -> None:
    path = str(tmp_path / "l.sqlite")
    proc = multiprocessing.get_context("fork").Process(target=_crash_after_charge, args=(path,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 17
    charges = BudgetLedger(path).charges("t", DIGEST)
    assert [(c.job_id, c.epsilon, c.settled) for c in charges] == [("crashing", 3.0, False)]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    budget=st.floats(min_value=0.5, max_value=10.0),
    amounts=st.lists(st.floats(min_value=0.0, max_value=4.0), min_size=1, max_size=24),
)
def test_concurrent_charges_never_exceed_budget(
    tmp_path_factory: pytest.TempPathFactory, budget: float, amounts: list[float]
) -> None:
    path = tmp_path_factory.mktemp("ledger") / "l.sqlite"
    ledger = BudgetLedger(path, default_budget=BudgetConfig(budget, 1.0 - 1e-9))
    accepted: list[float] = []
    refused: list[tuple[float, float]] = []
    lock = threading.Lock()
    start = threading.Barrier(min(8, len(amounts)))

    def job(i: int, amount: float) -> None:
        if i < 8:
            start.wait()
        try:
            ledger.charge("t", DIGEST, plan(amount, delta=1e-12), job_id=f"j{i}")
        except PrivacyBudgetExceeded as exc:
            assert exc.remaining_epsilon is not None
            with lock:
                refused.append((amount, exc.remaining_epsilon))
        else:
            with lock:
                accepted.append(amount)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(job, range(len(amounts)), amounts))
    spent = ledger.status("t", DIGEST).spent_epsilon
    assert spent <= budget
    assert spent == pytest.approx(sum(accepted))
    assert len(accepted) + len(refused) == len(amounts)
    for amount, remaining in refused:
        assert amount > remaining  # refused only when it truly did not fit
        assert amount > budget - spent  # ...and it still would not fit now


def _charge_many(path: str, n: int, amount: float, out: multiprocessing.Queue[int]) -> None:
    ledger = BudgetLedger(path)
    ok = 0
    for i in range(n):
        try:
            ledger.charge("t", DIGEST, plan(amount, delta=1e-9), job_id=f"{os.getpid()}-{i}")
            ok += 1
        except PrivacyBudgetExceeded:
            pass
    out.put(ok)


def test_concurrent_processes_never_exceed_budget(tmp_path: Path) -> None:
    path = str(tmp_path / "l.sqlite")
    BudgetLedger(path)  # default budget: epsilon 10
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[int] = ctx.Queue()
    procs = [ctx.Process(target=_charge_many, args=(path, 12, 0.3, out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    accepted = sum(out.get(timeout=10) for _ in procs)
    spent = BudgetLedger(path).status("t", DIGEST).spent_epsilon
    assert accepted == 33  # floor(10 / 0.3): exactly as many as fit, no more, no fewer
    assert spent == pytest.approx(33 * 0.3) and spent <= 10.0
