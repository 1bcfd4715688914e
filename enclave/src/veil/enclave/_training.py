"""Training inside the enclave: sealed datasets, DP-SGD jobs charged to a budget, certificates.

The privacy mathematics and the ledger live in ``privacy``; this module wires them to the
service: datasets at rest, the budget per (tenant, dataset), audit records for each job, the
registration of the trained ONNX model, and a training certificate signed by the log key that
the enclave's attestation vouches for.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import rfc8785

from veil.enclave._datasets import DatasetRecord, DatasetStore
from veil.enclave._errors import InvalidInput
from veil.enclave._handled import EnclaveContext, Handled, model_info
from veil.enclave._onnx import validate_onnx
from veil.enclave._store import parse_ref
from veil.enclave._training_mark import claim_digest as _claim_digest
from veil.enclave._training_mark import prepare_mark
from veil.sdk.audit import EventType, Outcome
from veil.sdk.errors import ConfigError, PrivacyBudgetExceeded
from veil.v1 import training_pb2

if TYPE_CHECKING:
    from veil.privacy import BudgetLedger

__all__ = ["CERTIFICATE_HEADER", "TrainingDesk"]

CERTIFICATE_HEADER = "veil-training-certificate/v1"
Emit = Callable[[training_pb2.TrainProgress], None]


def _input_shape(req: training_pb2.TrainRequest, feature_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The model's input shape: as requested, else the data's (a square image for the CNN)."""
    if req.input_shape:
        return tuple(int(d) for d in req.input_shape)
    if req.model_kind == "cnn" and len(feature_shape) == 1:
        side = math.isqrt(feature_shape[0])
        if side * side == feature_shape[0]:
            return (1, side, side)
    return feature_shape


def _spec_fields(req: training_pb2.TrainRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {"kind": req.model_kind or "mlp"}
    if req.hidden:
        fields["hidden"] = tuple(int(h) for h in req.hidden)
    if req.channels:
        fields["channels"] = tuple(int(c) for c in req.channels)
    if req.activation:
        fields["activation"] = req.activation
    if req.norm:
        fields["norm"] = req.norm
    return fields


class TrainingDesk:
    """Datasets, budgets and DP training jobs for one enclave."""

    def __init__(self, enclave: EnclaveContext, ledger: BudgetLedger | None = None) -> None:
        from veil.privacy import BudgetConfig, BudgetLedger

        self._enclave = enclave
        config = enclave.config
        self.datasets = DatasetStore(
            config.data_dir / "datasets",
            storage_key=lambda tenant: enclave.tee.sealing_key(b"datasets/" + tenant.encode()),
            headroom=config.limits.audit_headroom_bytes,
        )
        # A replica's ledger is the deployment's shared one (PostgreSQL, veil.enclave.scaleout).
        self.ledger = ledger or BudgetLedger(
            config.data_dir / "privacy-budget.sqlite",
            default_budget=BudgetConfig(config.budget_epsilon, config.budget_delta),
        )

    # -- datasets -------------------------------------------------------------------------

    def finish_dataset_upload(
        self, tenant: str, header: training_pb2.DatasetHeader, data: bytes
    ) -> Handled:
        from veil.privacy import DatasetLimits, load_dataset

        try:
            dataset = load_dataset(
                data,
                header.format,
                label_column=header.label_column or None,
                limits=DatasetLimits(max_bytes=self._enclave.config.max_dataset_bytes),
            )
        except ConfigError as exc:
            raise InvalidInput(str(exc)) from exc
        record = self.datasets.put(
            DatasetRecord(
                tenant=tenant,
                sha256=dataset.sha256,
                format=header.format,
                label_column=header.label_column,
                rows=dataset.num_rows,
                feature_shape=dataset.feature_shape,
                num_classes=dataset.num_classes,
                size=len(data),
            ),
            data,
        )
        info = training_pb2.DatasetInfo(
            sha256=record.sha256,
            format=record.format,
            rows=record.rows,
            feature_shape=list(record.feature_shape),
            num_classes=record.num_classes,
            size=record.size,
        )
        return Handled(info, resource=f"dataset:{record.sha256}", details={"rows": record.rows})

    # -- budget ---------------------------------------------------------------------------

    def budget(self, tenant: str, req: training_pb2.BudgetRequest) -> Handled:

        self.datasets.get(tenant, req.dataset_sha256)  # NOT_FOUND for someone else's dataset
        status = self.ledger.status(tenant, req.dataset_sha256)
        return Handled(
            training_pb2.BudgetResponse(
                epsilon_budget=status.budget_epsilon,
                epsilon_spent=status.spent_epsilon,
                epsilon_remaining=status.remaining_epsilon,
                delta_budget=status.budget_delta,
                delta_spent=status.spent_delta,
            ),
            resource=f"dataset:{req.dataset_sha256}",
        )

    # -- training -------------------------------------------------------------------------

    def _delta_share(self, tenant: str, dataset: str, req: training_pb2.TrainRequest) -> float:
        """A job's delta when its request names none: its share of the dataset's delta, in
        proportion to its epsilon (``BudgetStatus.delta_share``), so delta never limits it."""
        if not req.target_epsilon > 0:
            raise InvalidInput("target_epsilon must be positive")
        share = self.ledger.status(tenant, dataset).delta_share(req.target_epsilon)
        if share <= 0:
            status = self.ledger.status(tenant, dataset)
            raise PrivacyBudgetExceeded(
                f"dataset {dataset[:16]} has epsilon {status.remaining_epsilon:.4g} and delta "
                f"{status.remaining_delta:.3g} left",
                remaining_epsilon=status.remaining_epsilon,
                remaining_delta=status.remaining_delta,
            )
        return share

    def train(
        self, tenant: str, key_id: str, origin: str, req: training_pb2.TrainRequest, emit: Emit
    ) -> Handled:
        """Run one DP-SGD job: charge first, train, settle, register, certify."""
        from veil.privacy import (
            AccountantKind,
            Charge,
            ModelSpec,
            NoiseMode,
            ProgressEvent,
            TrainingAborted,
            TrainingConfig,
            load_dataset,
            plan_training,
            train_with_budget,
        )

        enclave = self._enclave
        meta, data = self.datasets.get(tenant, req.dataset_sha256)
        name = req.model_name or "trained"
        try:
            dataset = load_dataset(data, meta.format, label_column=meta.label_column or None)
            spec = ModelSpec(
                input_shape=_input_shape(req, dataset.feature_shape),
                num_classes=dataset.num_classes,
                **_spec_fields(req),
            )
            config = TrainingConfig(
                epochs=req.epochs or 5,
                batch_size=req.batch_size or 64,
                learning_rate=req.learning_rate or 0.5,
                optimizer=req.optimizer or "sgd",
                max_grad_norm=req.max_grad_norm or 1.0,
                delta=req.delta or self._delta_share(tenant, req.dataset_sha256, req),
                target_epsilon=req.target_epsilon,
                accountant=AccountantKind(req.accountant or "prv"),
                noise=NoiseMode(req.noise or "secure"),
                seed=req.seed if req.seed or req.noise == "fast" else None,
            )
            plan = plan_training(dataset.num_rows, config)
        except (ConfigError, ValueError) as exc:
            raise InvalidInput(str(exc).splitlines()[0]) from exc
        mark = prepare_mark(req.watermark, spec) if req.HasField("watermark") else None

        parse_ref(name)
        job_id = secrets.token_hex(8)
        common: dict[str, Any] = {"tenant": tenant, "origin": origin, "key_id": key_id}
        resource = f"dataset:{dataset.sha256}"
        enclave.record(
            EventType.TRAINING_STARTED,
            resource=resource,
            details={
                "job": job_id,
                "model": spec.name,
                "planned_epsilon": repr(plan.epsilon),
                "delta": repr(plan.delta),
                "steps": plan.steps,
            },
            **common,
        )

        def charged(charge: Charge) -> None:
            enclave.record(
                EventType.TRAINING_CHARGED,
                resource=resource,
                details={
                    "job": job_id,
                    "epsilon": repr(charge.epsilon),
                    "delta": repr(charge.delta),
                },
                **common,
            )

        def progress(event: ProgressEvent) -> None:
            emit(
                training_pb2.TrainProgress(
                    epoch=event.epoch,
                    step=event.step,
                    total_steps=event.total_steps,
                    loss=event.loss,
                    epsilon=event.epsilon,
                )
            )

        def failed(error: str) -> None:
            enclave.record(
                EventType.TRAINING_FINISHED,
                outcome=Outcome.FAILURE,
                resource=resource,
                details={"job": job_id, "error": error},
                **common,
            )

        try:  # charge (refused here when over budget), train, settle: privacy's one call
            result = train_with_budget(
                self.ledger,
                tenant,
                dataset,
                spec,
                config,
                job_id=job_id,
                plan=plan,
                on_charge=charged,
                progress=progress,
                progress_every=max(1, plan.steps // 50),
                weight_hook=None if mark is None else mark.hook,
            )
        except PrivacyBudgetExceeded:
            failed("budget exceeded")
            raise
        except TrainingAborted as exc:
            failed(f"aborted after {exc.steps_started} step(s)")
            raise InvalidInput(f"training stopped after {exc.steps_started} step(s)") from exc
        except Exception as exc:
            failed(type(exc).__name__)
            raise
        try:
            trained_mark = None if mark is None else mark.finish(result.onnx, enclave.clock())
        except InvalidInput:
            failed("watermark not embedded")
            raise
        validated = validate_onnx(
            result.onnx,
            max_bytes=enclave.config.max_model_bytes,
            allowed_domains=enclave.config.allowed_domains,
            limits=enclave.config.limits,
        )
        model = enclave.store.register(tenant, name, result.onnx, validated)
        record = json.loads(result.record.to_json())
        certified = {
            **record,
            "model_ref": model.ref,
            "tenant": tenant,
            "code_measurement": enclave.measurement.hex(),
            "issued_at": enclave.clock().isoformat(),
        }
        if trained_mark is not None:  # the certificate binds the claim to the trained model
            certified["watermark_claim_sha256"] = _claim_digest(trained_mark.claim_json)
        body = bytes(rfc8785.dumps(certified)).decode()
        certificate = enclave.audit.signer.sign_note(f"{CERTIFICATE_HEADER}\n{body}\n")
        enclave.record(
            EventType.TRAINING_FINISHED,
            resource=resource,
            details={
                "job": job_id,
                "model": model.ref,
                "model_sha256": model.sha256,
                "epsilon": repr(result.record.epsilon),
                "steps": result.record.steps,
                **(
                    {}
                    if mark is None
                    else {
                        "watermark_commitment": mark.commitment,
                        "owner_public_key": mark.owner_public_key,
                    }
                ),
            },
            **common,
        )
        return Handled(
            training_pb2.TrainEvent(
                result=training_pb2.TrainResult(
                    model=model_info(model),
                    record_json=body,
                    certificate=certificate,
                    watermark=trained_mark,
                )
            ),
            resource=model.ref,
            details={"job": job_id, "epsilon": repr(result.record.epsilon)},
            model_digest=model.sha256,
        )
