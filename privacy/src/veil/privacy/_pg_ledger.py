"""The privacy budget ledger in PostgreSQL, shared by every replica of a deployment.

Same API and the same rules as the SQLite ``BudgetLedger`` (basic composition, charge before
the job, settle for the steps that started), with the atomicity moved into the database: each
charge runs in one transaction that first locks the dataset's budget row
(``SELECT ... FOR UPDATE``, the row created if absent), so two replicas charging the same
dataset are serialised by PostgreSQL and can never both pass the budget. A job is charged at
most once (``UNIQUE (tenant, dataset, job_id)``): the ranks of a multi-node job share one
charge, made by the rank that starts the job.

Needs ``psycopg`` (``pip install veil-ai-privacy[postgres]``).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from veil.sdk.errors import ConfigError, VeilError

from ._ledger import (
    BudgetConfig,
    BudgetLedger,
    BudgetStatus,
    Charge,
    charge_values,
    charges_from_rows,
    check_charge,
    check_fits,
    epsilon_used,
    settled,
    sum_by_tenant,
)
from ._training import TrainingPlan

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresBudgetLedger"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS veil_budgets (
        tenant TEXT NOT NULL,
        dataset TEXT NOT NULL,
        epsilon DOUBLE PRECISION NOT NULL,
        delta DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, dataset)
    )""",
    """CREATE TABLE IF NOT EXISTS veil_charges (
        seq BIGSERIAL,
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        dataset TEXT NOT NULL,
        job_id TEXT NOT NULL,
        epsilon DOUBLE PRECISION NOT NULL,
        delta DOUBLE PRECISION NOT NULL,
        planned_epsilon DOUBLE PRECISION NOT NULL,
        noise_multiplier DOUBLE PRECISION NOT NULL,
        sample_rate DOUBLE PRECISION NOT NULL,
        steps INTEGER NOT NULL,
        accountant TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'settled')),
        steps_ran INTEGER,
        UNIQUE (tenant, dataset, job_id)
    )""",
    "CREATE INDEX IF NOT EXISTS veil_charges_by_dataset ON veil_charges (tenant, dataset)",
)
_SCHEMA_LOCK = 0x76656C67
_BUDGET = "SELECT epsilon, delta FROM veil_budgets WHERE tenant=%s AND dataset=%s"
_BUDGET_FOR_UPDATE = _BUDGET + " FOR UPDATE"


class PostgresBudgetLedger(BudgetLedger):
    """A ``BudgetLedger`` whose storage is a PostgreSQL database (``postgresql://`` URL).

    Every operation is overridden (nothing of the SQLite storage is used), so it goes wherever
    a ``BudgetLedger`` does: ``train_with_budget``, the enclave's training desk.
    """

    def __init__(
        self, url: str, *, default_budget: BudgetConfig | None = None, timeout_s: float = 30.0
    ) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("the budget ledger URL must be a postgresql:// URL")
        self._url = url
        self._default = default_budget or BudgetConfig()
        self._timeout = timeout_s
        with self._transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _SCHEMA:
                conn.execute(statement.encode())

    def __repr__(self) -> str:  # the URL may hold a password
        return "PostgresBudgetLedger()"

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            import psycopg
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                "the PostgreSQL ledger needs psycopg: pip install 'veil-ai-privacy[postgres]'"
            ) from exc
        try:
            with psycopg.connect(self._url, connect_timeout=max(1, int(self._timeout))) as conn:
                conn.execute(f"SET lock_timeout = '{int(self._timeout * 1000)}ms'".encode())
                with conn.transaction():
                    yield conn
        except psycopg.Error as exc:
            raise VeilError(f"budget ledger failed: {type(exc).__name__}") from exc

    @staticmethod
    def _pg_spent(
        conn: psycopg.Connection[Any], tenant: str, dataset: str
    ) -> tuple[list[float], list[float]]:
        rows = conn.execute(
            "SELECT epsilon, delta FROM veil_charges WHERE tenant=%s AND dataset=%s",
            (tenant, dataset),
        ).fetchall()
        return [float(r[0]) for r in rows], [float(r[1]) for r in rows]

    def _pg_status(
        self, conn: psycopg.Connection[Any], tenant: str, dataset: str, *, lock: bool
    ) -> BudgetStatus:
        if lock:
            conn.execute(
                "INSERT INTO veil_budgets (tenant, dataset, epsilon, delta) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (tenant, dataset, self._default.epsilon, self._default.delta),
            )
        query = _BUDGET_FOR_UPDATE if lock else _BUDGET
        row = conn.execute(query, (tenant, dataset)).fetchone()
        budget = (
            (self._default.epsilon, self._default.delta)
            if row is None
            else (float(row[0]), float(row[1]))
        )
        eps, deltas = self._pg_spent(conn, tenant, dataset)
        return BudgetStatus(budget[0], budget[1], math.fsum(eps), math.fsum(deltas))

    def status(self, tenant: str, dataset_sha256: str) -> BudgetStatus:
        """Budget and what is spent (open charges count in full)."""
        with self._transaction() as conn:
            return self._pg_status(conn, tenant, dataset_sha256, lock=False)

    def charge(
        self, tenant: str, dataset_sha256: str, plan: TrainingPlan, *, job_id: str
    ) -> Charge:
        """Reserve the plan's epsilon and delta, or raise ``PrivacyBudgetExceeded``."""
        check_charge(plan, tenant, dataset_sha256)
        charge_id = uuid.uuid4().hex
        with self._transaction() as conn:
            st = self._pg_status(conn, tenant, dataset_sha256, lock=True)
            spent = self._pg_spent(conn, tenant, dataset_sha256)
            check_fits(plan, st, spent, tenant=tenant, dataset_sha256=dataset_sha256, job_id=job_id)
            taken = conn.execute(
                "SELECT 1 FROM veil_charges WHERE tenant=%s AND dataset=%s AND job_id=%s",
                (tenant, dataset_sha256, job_id),
            ).fetchone()
            if taken is not None:
                raise ConfigError(f"job {job_id} is already charged")
            conn.execute(
                "INSERT INTO veil_charges (id, tenant, dataset, job_id, epsilon, delta, "
                "planned_epsilon, noise_multiplier, sample_rate, steps, accountant, state) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'open')",
                charge_values(charge_id, tenant, dataset_sha256, job_id, plan),
            )
        return Charge(
            charge_id, tenant, dataset_sha256, job_id, plan.epsilon, plan.delta, settled=False
        )

    def settle(self, charge_id: str, *, steps_started: int) -> Charge:
        """Close a charge for the ``steps_started`` steps that ran; refund the rest (once)."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT noise_multiplier, sample_rate, steps, accountant, delta, state "
                "FROM veil_charges WHERE id=%s",
                (charge_id,),
            ).fetchone()
        if row is None:
            raise ConfigError(f"no budget charge {charge_id}")
        if row[5] != "open":
            raise ConfigError(f"budget charge {charge_id} is already settled")
        used = epsilon_used(row[:5], steps_started)
        with self._transaction() as conn:
            cur = conn.execute(
                "SELECT tenant, dataset, job_id, epsilon, delta, state FROM veil_charges "
                "WHERE id=%s FOR UPDATE",
                (charge_id,),
            ).fetchone()
            assert cur is not None  # charges are never deleted
            done = settled(cur, charge_id, used, steps_started)
            conn.execute(
                "UPDATE veil_charges SET epsilon=%s, delta=%s, state='settled', steps_ran=%s "
                "WHERE id=%s",
                (done.epsilon, done.delta, steps_started, charge_id),
            )
        return done

    def spent_by_tenant(self) -> dict[str, tuple[float, float]]:
        """(epsilon, delta) charged per tenant, summed over its datasets (open charges in full)."""
        with self._transaction() as conn:
            rows = conn.execute("SELECT tenant, epsilon, delta FROM veil_charges").fetchall()
        return sum_by_tenant(rows)

    def charges(self, tenant: str, dataset_sha256: str) -> list[Charge]:
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT id, job_id, epsilon, delta, state FROM veil_charges "
                "WHERE tenant=%s AND dataset=%s ORDER BY seq",
                (tenant, dataset_sha256),
            ).fetchall()
        return charges_from_rows(rows, tenant, dataset_sha256)
