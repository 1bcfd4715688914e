"""Differentially private training for Veil enclaves (Opacus DP-SGD with a budget ledger).

Typical enclave-side use::

    ds = load_dataset(upload_bytes, "csv")
    spec = ModelSpec.from_toml(model_toml)
    cfg = TrainingConfig.from_toml(training_toml)
    ledger = BudgetLedger("/var/lib/veil/budget.sqlite", default_budget=BudgetConfig(10, 1e-5))
    result = train_with_budget(ledger, tenant, ds, spec, cfg, job_id=job, progress=on_progress)
    result.onnx            # ONNX bytes, servable by onnxruntime
    result.record.to_json()  # canonical JSON training record (sign it, audit it)
"""

from ._accounting import AccountantKind, compute_epsilon, find_noise_multiplier
from ._datasets import DEFAULT_FEATURE_RANGE, Dataset, DatasetFormat, DatasetLimits, load_dataset
from ._export import INPUT_NAME, OUTPUT_NAME, export_onnx
from ._jobs import train_with_budget
from ._ledger import BudgetConfig, BudgetLedger, BudgetStatus, Charge
from ._models import ModelSpec, build_model, make_private_compatible
from ._noise import ENTROPY_BYTES, NoiseMode, NoiseSource, rekey_generator
from ._pg_ledger import PostgresBudgetLedger
from ._record import TrainingRecord
from ._training import (
    GRAD_SAMPLE_MODES,
    AuditedStep,
    ProgressEvent,
    TrainingAborted,
    TrainingConfig,
    TrainingPlan,
    TrainingResult,
    audit_step,
    choose_grad_sample_mode,
    default_device,
    evaluate_accuracy,
    plan_training,
    poisson_schedule,
    train,
)

__all__ = [
    "DEFAULT_FEATURE_RANGE",
    "ENTROPY_BYTES",
    "GRAD_SAMPLE_MODES",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "AccountantKind",
    "AuditedStep",
    "BudgetConfig",
    "BudgetLedger",
    "PostgresBudgetLedger",
    "BudgetStatus",
    "Charge",
    "Dataset",
    "DatasetFormat",
    "DatasetLimits",
    "ModelSpec",
    "NoiseMode",
    "NoiseSource",
    "ProgressEvent",
    "TrainingAborted",
    "TrainingConfig",
    "TrainingPlan",
    "TrainingRecord",
    "TrainingResult",
    "audit_step",
    "build_model",
    "choose_grad_sample_mode",
    "compute_epsilon",
    "default_device",
    "evaluate_accuracy",
    "export_onnx",
    "find_noise_multiplier",
    "load_dataset",
    "make_private_compatible",
    "plan_training",
    "poisson_schedule",
    "rekey_generator",
    "train",
    "train_with_budget",
]
