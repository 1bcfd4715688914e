"""One call for the enclave service: charge the budget, train, settle, return the result."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ._datasets import Dataset
from ._ledger import BudgetLedger, Charge
from ._models import ModelSpec
from ._noise import NoiseSource
from ._training import (
    ProgressEvent,
    TrainingAborted,
    TrainingConfig,
    TrainingPlan,
    TrainingResult,
    plan_training,
    train,
)

__all__ = ["train_with_budget"]


def train_with_budget(
    ledger: BudgetLedger,
    tenant: str,
    dataset: Dataset,
    spec: ModelSpec,
    config: TrainingConfig,
    *,
    job_id: str,
    noise: NoiseSource | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    progress_every: int = 0,
    plan: TrainingPlan | None = None,
    on_charge: Callable[[Charge], None] | None = None,
    weight_hook: Callable[[nn.Module], None] | None = None,
) -> TrainingResult:
    """Plan the job, charge its full epsilon to (tenant, dataset digest) BEFORE training, train,
    then settle: a finished job keeps its charge; a job that stopped is refunded only for the
    steps that never started. Raises ``PrivacyBudgetExceeded`` before touching the data if the
    budget cannot cover the job, and re-raises ``TrainingAborted`` after settling.

    ``plan`` is the job's schedule when the caller already fixed it (``plan_training``);
    ``on_charge`` is told of the charge once it is durable, before training starts;
    ``weight_hook`` is passed to :func:`train` (a weights-only regulariser, outside the
    accounting)."""
    if plan is None:
        plan = plan_training(dataset.num_rows, config)
    charge = ledger.charge(tenant, dataset.sha256, plan, job_id=job_id)
    if on_charge is not None:
        on_charge(charge)
    try:
        result = train(
            dataset,
            spec,
            config,
            plan=plan,
            noise=noise,
            progress=progress,
            progress_every=progress_every,
            weight_hook=weight_hook,
        )
    except TrainingAborted as exc:
        ledger.settle(charge.id, steps_started=exc.steps_started)
        raise
    except Exception:
        # Failed before the first step (validation, model build): nothing touched the data.
        ledger.settle(charge.id, steps_started=0)
        raise
    ledger.settle(charge.id, steps_started=result.record.steps)
    return result
