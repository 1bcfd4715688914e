"""A persistent, crash-safe privacy budget ledger per (tenant, dataset digest).

Storage is SQLite in WAL mode with ``synchronous=FULL``: a committed charge survives a crash or
power loss, and a half-written one never appears. Every read-check-write runs inside
``BEGIN IMMEDIATE``, which takes SQLite's write lock before reading, so concurrent jobs — threads
or separate processes sharing the file — are serialised and cannot race past the budget.

Composition rule (basic composition, Dwork & Roth, Thm 3.16): if job i is (eps_i, delta_i)-DP,
running all of them on the dataset, even adaptively, is (sum eps_i, sum delta_i)-DP. The ledger
therefore charges both an epsilon and a delta per job and keeps *both* sums within the dataset's
budget. It is loose (a joint PRV analysis of all jobs would be tighter) but valid for any mix of
mechanisms, accountants and deltas.

Charges are made BEFORE a job starts, for the epsilon its full schedule will spend. A job that
stops early is *settled* for the steps that started (the ledger recomputes epsilon for those
steps and refunds the rest); a job that never settles — a crashed process — stays fully charged.
"""

from __future__ import annotations

import math
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.sdk.errors import ConfigError, PrivacyBudgetExceeded, VeilError

from ._accounting import AccountantKind, compute_epsilon
from ._training import TrainingPlan

__all__ = ["BudgetConfig", "BudgetLedger", "BudgetStatus", "Charge"]

# ``BudgetStatus.delta_share`` gives this much less than the exact share: sums of shares then
# never pass the budget by a rounding error.
DELTA_SHARE_MARGIN = 1e-9

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    tenant TEXT NOT NULL,
    dataset TEXT NOT NULL,
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    PRIMARY KEY (tenant, dataset)
);
CREATE TABLE IF NOT EXISTS charges (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    dataset TEXT NOT NULL,
    job_id TEXT NOT NULL,
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    planned_epsilon REAL NOT NULL,
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    accountant TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'settled')),
    steps_ran INTEGER
);
CREATE INDEX IF NOT EXISTS charges_by_dataset ON charges (tenant, dataset);
"""


@dataclass(frozen=True)
class BudgetConfig:
    """The (epsilon, delta) budget a dataset gets when it is first charged."""

    epsilon: float = 10.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"budget epsilon {self.epsilon} must be positive")
        if not 0 < self.delta < 1:
            raise ConfigError(f"budget delta {self.delta} must be in (0, 1)")


@dataclass(frozen=True)
class Charge:
    """One job's reservation: ``epsilon``/``delta`` are what it currently holds."""

    id: str
    tenant: str
    dataset_sha256: str
    job_id: str
    epsilon: float
    delta: float
    settled: bool


@dataclass(frozen=True)
class BudgetStatus:
    budget_epsilon: float
    budget_delta: float
    spent_epsilon: float
    spent_delta: float

    @property
    def remaining_epsilon(self) -> float:
        return max(0.0, self.budget_epsilon - self.spent_epsilon)

    @property
    def remaining_delta(self) -> float:
        return max(0.0, self.budget_delta - self.spent_delta)

    def delta_share(self, epsilon: float) -> float:
        """The delta for a job of ``epsilon`` that leaves no job short of delta: the remaining
        delta in proportion to the share of the remaining epsilon the job takes.

        A job with this delta fits the delta budget whenever its epsilon fits the epsilon
        budget, and the ratio of delta to epsilon left is the same after it, so delta never
        limits such jobs (the share is shaved by one part in 1e9 against rounding).
        """
        eps_left = self.remaining_epsilon
        if eps_left <= 0 or not math.isfinite(epsilon) or epsilon <= 0:
            return 0.0
        return self.remaining_delta * min(1.0, epsilon / eps_left) * (1 - DELTA_SHARE_MARGIN)


def check_charge(plan: TrainingPlan, tenant: str, dataset_sha256: str) -> None:
    """The arguments every ledger refuses before touching storage."""
    if not (math.isfinite(plan.epsilon) and plan.epsilon >= 0):
        raise ConfigError(f"charge epsilon {plan.epsilon} must be a non-negative number")
    if not tenant or not dataset_sha256:
        raise ConfigError("a charge needs a tenant and a dataset digest")


def check_fits(
    plan: TrainingPlan,
    status: BudgetStatus,
    spent: tuple[list[float], list[float]],
    *,
    tenant: str,
    dataset_sha256: str,
    job_id: str,
) -> None:
    """Raise ``PrivacyBudgetExceeded`` unless ``plan`` fits beside the charges ``spent``
    (epsilons, deltas), totals summed exactly as ``status()`` sums them once it is in."""
    eps, deltas = spent
    if math.fsum([*eps, plan.epsilon]) > status.budget_epsilon:
        raise PrivacyBudgetExceeded(
            f"job {job_id} needs epsilon {plan.epsilon:.4g} but dataset "
            f"{dataset_sha256[:16]} of tenant {tenant!r} has {status.remaining_epsilon:.4g} "
            f"of {status.budget_epsilon:.4g} left",
            remaining_epsilon=status.remaining_epsilon,
            remaining_delta=status.remaining_delta,
        )
    if math.fsum([*deltas, plan.delta]) > status.budget_delta:
        raise PrivacyBudgetExceeded(
            f"job {job_id} needs delta {plan.delta:.3g} but dataset "
            f"{dataset_sha256[:16]} of tenant {tenant!r} has {status.remaining_delta:.3g} "
            f"of delta {status.budget_delta:.3g} left",
            remaining_epsilon=status.remaining_epsilon,
            remaining_delta=status.remaining_delta,
        )


def charge_values(
    charge_id: str, tenant: str, dataset_sha256: str, job_id: str, plan: TrainingPlan
) -> tuple[object, ...]:
    """The columns of a new open charge: id, tenant, dataset, job_id, epsilon, delta,
    planned_epsilon, noise_multiplier, sample_rate, steps, accountant."""
    return (
        charge_id,
        tenant,
        dataset_sha256,
        job_id,
        plan.epsilon,
        plan.delta,
        plan.epsilon,
        plan.noise_multiplier,
        plan.sample_rate,
        plan.steps,
        plan.accountant.value,
    )


def epsilon_used(schedule: tuple[Any, ...], steps_started: int) -> float:
    """Epsilon of the ``steps_started`` steps that ran, from a charge's (noise_multiplier,
    sample_rate, steps, accountant, delta)."""
    sigma, q, steps, accountant, delta = schedule
    if not 0 <= steps_started <= int(steps):
        raise ConfigError(f"steps_started {steps_started} outside 0..{steps}")
    return compute_epsilon(
        noise_multiplier=float(sigma),
        sample_rate=float(q),
        steps=steps_started,
        delta=float(delta),
        accountant=AccountantKind(accountant),
    )


def settled(row: tuple[Any, ...], charge_id: str, used: float, steps_started: int) -> Charge:
    """The settled charge for its current (tenant, dataset, job_id, epsilon, delta, state):
    epsilon lowered to what ran, delta refunded when no step started; only an open one."""
    tenant, dataset, job_id, charged, charged_delta, state = row
    if state != "open":
        raise ConfigError(f"budget charge {charge_id} is already settled")
    new_eps = min(float(charged), used)
    new_delta = 0.0 if steps_started == 0 else float(charged_delta)
    return Charge(charge_id, tenant, dataset, job_id, new_eps, new_delta, settled=True)


def sum_by_tenant(rows: Iterable[tuple[Any, ...]]) -> dict[str, tuple[float, float]]:
    """(epsilon, delta) per tenant from (tenant, epsilon, delta) rows, summed exactly."""
    eps: dict[str, list[float]] = {}
    deltas: dict[str, list[float]] = {}
    for tenant, e, d in rows:
        eps.setdefault(tenant, []).append(float(e))
        deltas.setdefault(tenant, []).append(float(d))
    return {t: (math.fsum(eps[t]), math.fsum(deltas[t])) for t in eps}


def charges_from_rows(
    rows: Iterable[tuple[Any, ...]], tenant: str, dataset_sha256: str
) -> list[Charge]:
    """Charges from (id, job_id, epsilon, delta, state) rows."""
    return [
        Charge(r[0], tenant, dataset_sha256, r[1], float(r[2]), float(r[3]), r[4] == "settled")
        for r in rows
    ]


class BudgetLedger:
    """Charges, settles and reports privacy budgets, persisted in the SQLite file ``path``.

    Safe to share between threads and processes: each operation opens its own connection.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        default_budget: BudgetConfig | None = None,
        busy_timeout_s: float = 60.0,
    ) -> None:
        self._path = str(path)
        self._default = default_budget or BudgetConfig()
        self._timeout = busy_timeout_s
        with self._connect() as conn:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(f"budget ledger {self._path} cannot use WAL journaling ({mode})")
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"budget ledger {self._path} cannot be opened: {exc}") from exc
        try:
            conn.execute("PRAGMA synchronous=FULL")
            yield conn
        except sqlite3.Error as exc:
            raise VeilError(f"budget ledger {self._path} failed: {exc}") from exc
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _status(
        conn: sqlite3.Connection, tenant: str, dataset: str, default: BudgetConfig | None
    ) -> BudgetStatus:
        row = conn.execute(
            "SELECT epsilon, delta FROM budgets WHERE tenant=? AND dataset=?", (tenant, dataset)
        ).fetchone()
        if row is None:
            if default is None:
                raise ConfigError("dataset has no budget row")
            budget_eps, budget_delta = default.epsilon, default.delta
        else:
            budget_eps, budget_delta = float(row[0]), float(row[1])
        eps, deltas = BudgetLedger._spent(conn, tenant, dataset)
        return BudgetStatus(budget_eps, budget_delta, math.fsum(eps), math.fsum(deltas))

    @staticmethod
    def _spent(
        conn: sqlite3.Connection, tenant: str, dataset: str
    ) -> tuple[list[float], list[float]]:
        rows = conn.execute(
            "SELECT epsilon, delta FROM charges WHERE tenant=? AND dataset=?", (tenant, dataset)
        ).fetchall()
        return [float(r[0]) for r in rows], [float(r[1]) for r in rows]

    def status(self, tenant: str, dataset_sha256: str) -> BudgetStatus:
        """Budget and what is spent (open charges count in full)."""
        with self._connect() as conn:
            return self._status(conn, tenant, dataset_sha256, self._default)

    def charge(
        self, tenant: str, dataset_sha256: str, plan: TrainingPlan, *, job_id: str
    ) -> Charge:
        """Reserve ``plan.epsilon`` and ``plan.delta`` before the job starts, or raise
        ``PrivacyBudgetExceeded`` (with ``remaining_epsilon``) if either sum would pass the
        dataset's budget. A dataset's budget is fixed from ``default_budget`` at its first charge.
        """
        check_charge(plan, tenant, dataset_sha256)
        charge_id = uuid.uuid4().hex
        with self._write() as conn:
            st = self._status(conn, tenant, dataset_sha256, self._default)
            spent = self._spent(conn, tenant, dataset_sha256)
            check_fits(plan, st, spent, tenant=tenant, dataset_sha256=dataset_sha256, job_id=job_id)
            conn.execute(
                "INSERT OR IGNORE INTO budgets (tenant, dataset, epsilon, delta) "
                "VALUES (?, ?, ?, ?)",
                (tenant, dataset_sha256, st.budget_epsilon, st.budget_delta),
            )
            conn.execute(
                "INSERT INTO charges (id, tenant, dataset, job_id, epsilon, delta, "
                "planned_epsilon, noise_multiplier, sample_rate, steps, accountant, state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open')",
                charge_values(charge_id, tenant, dataset_sha256, job_id, plan),
            )
        return Charge(
            charge_id, tenant, dataset_sha256, job_id, plan.epsilon, plan.delta, settled=False
        )

    def settle(self, charge_id: str, *, steps_started: int) -> Charge:
        """Close a charge once its job has ended, after ``steps_started`` steps touched data.

        Epsilon is recomputed for those steps with the job's own schedule and accountant and the
        difference is refunded; a job that started no step also gets its delta back. Settling
        only ever lowers a charge, and only once.
        """
        with self._connect() as conn:
            row = conn.execute(
                "SELECT noise_multiplier, sample_rate, steps, accountant, delta, state "
                "FROM charges WHERE id=?",
                (charge_id,),
            ).fetchone()
        if row is None:
            raise ConfigError(f"no budget charge {charge_id}")
        used = epsilon_used(row[:5], steps_started)
        with self._write() as conn:
            cur = conn.execute(
                "SELECT tenant, dataset, job_id, epsilon, delta, state FROM charges WHERE id=?",
                (charge_id,),
            ).fetchone()
            done = settled(cur, charge_id, used, steps_started)
            conn.execute(
                "UPDATE charges SET epsilon=?, delta=?, state='settled', steps_ran=? WHERE id=?",
                (done.epsilon, done.delta, steps_started, charge_id),
            )
        return done

    def spent_by_tenant(self) -> dict[str, tuple[float, float]]:
        """(epsilon, delta) charged per tenant, summed over its datasets (open charges in full)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT tenant, epsilon, delta FROM charges").fetchall()
        return sum_by_tenant(rows)

    def charges(self, tenant: str, dataset_sha256: str) -> list[Charge]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT id, job_id, epsilon, delta, state FROM charges "
                "WHERE tenant=? AND dataset=? ORDER BY rowid",
                (tenant, dataset_sha256),
            ).fetchall()
        return charges_from_rows(rows, tenant, dataset_sha256)
