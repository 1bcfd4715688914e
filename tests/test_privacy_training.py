"""DP-SGD training end to end: ONNX export served by onnxruntime, records, noise modes,
progress, budget-charged jobs and refunds for jobs that stop early."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from sklearn.datasets import load_digits

from veil.privacy import (
    ENTROPY_BYTES,
    INPUT_NAME,
    BudgetConfig,
    BudgetLedger,
    Dataset,
    ModelSpec,
    NoiseMode,
    NoiseSource,
    ProgressEvent,
    TrainingAborted,
    TrainingConfig,
    TrainingRecord,
    compute_epsilon,
    evaluate_accuracy,
    plan_training,
    train,
    train_with_budget,
)
from veil.sdk.errors import ConfigError, InsecureModeWarning, PrivacyBudgetExceeded

torch.set_num_threads(1)

_DIGITS = load_digits()
_X = (_DIGITS.data / 16.0).astype(np.float32)
_Y = _DIGITS.target
TRAIN = Dataset.from_arrays(_X[:1400], _Y[:1400], sha256="11" * 32)
TEST = Dataset.from_arrays(_X[1400:], _Y[1400:], sha256="22" * 32)
SMALL = Dataset.from_arrays(_X[:300], _Y[:300], sha256="33" * 32)

SPECS = {
    "logreg": ModelSpec("logreg", (64,), 10),
    "mlp": ModelSpec("mlp", (64,), 10, hidden=(32,)),
    "cnn": ModelSpec("cnn", (1, 8, 8), 10, channels=(8, 16)),
    "cnn-batchnorm": ModelSpec("cnn", (1, 8, 8), 10, channels=(8,), norm="batch"),
}


def fast(**kw: object) -> TrainingConfig:
    base: dict[str, object] = {
        "epochs": 1,
        "batch_size": 50,
        "noise_multiplier": 1.0,
        "noise": NoiseMode.FAST,
        "seed": 5,
    }
    base.update(kw)
    return TrainingConfig(**base)  # type: ignore[arg-type]


def quiet_train(*args: object, **kw: object):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureModeWarning)
        return train(*args, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", list(SPECS))
def test_trained_model_exports_to_onnx_that_onnxruntime_serves_identically(name: str) -> None:
    spec = SPECS[name]
    result = quiet_train(SMALL, spec, fast())
    onnx.checker.check_model(onnx.load_from_string(result.onnx))
    session = ort.InferenceSession(result.onnx, providers=["CPUExecutionProvider"])
    x = SMALL.features[:37].reshape(-1, *spec.input_shape)
    got = session.run(None, {INPUT_NAME: x})[0]
    with torch.no_grad():
        want = result.model(torch.from_numpy(x)).numpy()
    assert got.shape == (37, 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert result.record.model_sha256 == hashlib.sha256(result.onnx).hexdigest()
    assert result.record.model == spec.name


def test_record_holds_the_schedule_and_is_canonical_json() -> None:
    cfg = fast(epochs=2, batch_size=60, max_grad_norm=0.7, delta=1e-6)
    result = quiet_train(SMALL, SPECS["mlp"], cfg)
    rec = result.record
    assert (rec.steps, rec.sample_rate, rec.epochs, rec.batch_size) == (10, 1 / 5, 2, 60)
    assert (rec.noise_multiplier, rec.max_grad_norm, rec.delta) == (1.0, 0.7, 1e-6)
    assert rec.dataset_sha256 == SMALL.sha256 and rec.num_rows == 300
    assert rec.accountant == "prv" and rec.grad_sample_mode == "bk"
    assert rec.secure_rng is False and rec.world_size == 1
    assert rec.epsilon == compute_epsilon(
        noise_multiplier=1.0, sample_rate=0.2, steps=10, delta=1e-6
    )
    blob = rec.to_json()
    assert TrainingRecord.from_json(blob) == rec
    assert TrainingRecord.from_json(blob).to_json() == blob
    assert blob.startswith(b'{"accountant":"prv","batch_size":60,')  # RFC 8785 key order


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("epsilon"), "differ from the schema"),
        (lambda d: d.update(steps="10"), "'steps' must be int"),
        (lambda d: d.update(secure_rng=1), "'secure_rng' must be bool"),
    ],
)
def test_record_from_json_rejects_tampered_records(mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    import json

    raw = json.loads(quiet_train(SMALL, SPECS["logreg"], fast()).record.to_json())
    mutate(raw)
    with pytest.raises(ConfigError, match=match):
        TrainingRecord.from_json(json.dumps(raw))


def test_target_epsilon_is_met_and_cnn_learns_digits() -> None:
    # Seeded noise makes the accuracy deterministic (0.82 here; seeds 0-3 give 0.79-0.84);
    # secure noise is exercised by the tests below.
    cfg = TrainingConfig(
        epochs=6,
        batch_size=64,
        learning_rate=1.0,
        momentum=0.5,
        target_epsilon=8.0,
        delta=1e-5,
        noise=NoiseMode.FAST,
        seed=0,
    )
    result = quiet_train(TRAIN, SPECS["cnn"], cfg)
    assert 0.95 * 8.0 <= result.record.epsilon <= 8.0
    assert result.record.grad_sample_mode == "bk"
    assert evaluate_accuracy(result.model, TEST, (1, 8, 8)) > 0.7


def test_fast_mode_warns_every_run_and_is_reproducible() -> None:
    records = []
    for _ in range(2):
        with pytest.warns(InsecureModeWarning, match="NOT secure"):
            records.append(train(SMALL, SPECS["logreg"], fast()).record)
    assert records[0].model_sha256 == records[1].model_sha256
    other = quiet_train(SMALL, SPECS["logreg"], fast(seed=6)).record
    assert other.model_sha256 != records[0].model_sha256


@pytest.mark.parametrize("prefetch", [False, True])
def test_secure_mode_is_silent_and_reseeds_from_entropy_before_every_draw(prefetch: bool) -> None:
    calls: list[int] = []

    def entropy(n: int) -> bytes:  # called from the noise worker too (list.append is atomic)
        calls.append(n)
        return np.random.default_rng(len(calls)).bytes(n)

    cfg = fast(noise=NoiseMode.SECURE, epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecureModeWarning)
        result = train(
            SMALL,
            SPECS["logreg"],
            cfg,
            noise=NoiseSource.secure(entropy),
            prefetch_noise=prefetch,
        )
    steps = result.record.steps
    # two initial seeds, then one reseed before every Poisson draw and every noisy step
    assert len(calls) == 2 + 2 * steps and set(calls) == {ENTROPY_BYTES}
    assert result.record.secure_rng is True


def test_secure_noise_is_not_reproducible() -> None:
    cfg = fast(noise=NoiseMode.SECURE)
    a = train(SMALL, SPECS["logreg"], cfg).record.model_sha256
    b = train(SMALL, SPECS["logreg"], cfg).record.model_sha256
    assert a != b


def test_progress_reports_growing_epsilon_ending_at_record() -> None:
    events: list[ProgressEvent] = []
    result = quiet_train(SMALL, SPECS["logreg"], fast(epochs=3), progress=events.append)
    assert [e.epoch for e in events] == [0, 1, 2]
    assert [e.step for e in events] == [6, 12, 18]
    eps = [e.epsilon for e in events]
    assert eps == sorted(eps) and eps[-1] == result.record.epsilon
    assert all(np.isfinite(e.loss) for e in events)


def test_per_step_progress_bounds_spent_epsilon_from_above() -> None:
    events: list[ProgressEvent] = []
    quiet_train(SMALL, SPECS["logreg"], fast(epochs=3), progress=events.append, progress_every=1)
    assert [e.step for e in events] == list(range(1, 19))
    for e in (events[0], events[5], events[6], events[17]):
        spent = compute_epsilon(noise_multiplier=1.0, sample_rate=1 / 6, steps=e.step, delta=1e-6)
        assert e.epsilon >= spent
    assert len({e.epsilon for e in events}) == 3  # one bound per epoch


def test_every_offered_mode_trains_the_mlp() -> None:
    for mode in ("bk", "ghost", "hooks", "functorch"):
        rec = quiet_train(SMALL, SPECS["mlp"], fast(grad_sample_mode=mode)).record
        assert rec.grad_sample_mode == mode


@pytest.mark.parametrize(
    ("spec", "cfg", "match"),
    [
        (ModelSpec("logreg", (32,), 10), fast(), "model expects shape"),
        (ModelSpec("logreg", (64,), 5), fast(), "10 classes but the model outputs 5"),
        (SPECS["cnn"], fast(grad_sample_mode="functorch"), "functorch"),
        (SPECS["cnn-batchnorm"], fast(grad_sample_mode="bk"), "'bk' needs a model of Conv2d"),
    ],
)
def test_mismatched_jobs_are_refused(spec: ModelSpec, cfg: TrainingConfig, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        quiet_train(SMALL, spec, cfg)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_multiplier": None}, "exactly one"),
        ({"target_epsilon": 1.0}, "exactly one"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"delta": 1.0}, "delta"),
        ({"grad_sample_mode": "ew"}, "grad_sample_mode"),
        ({"seed": None}, "needs a seed"),
        ({"epochs": 2.5}, "must be an integer"),
        ({"batch_size": True}, "must be an integer"),
        ({"seed": "7"}, "must be an integer"),
        ({"optimizer": 3}, "must be a string"),
        ({"noise": "fast"}, "AccountantKind/NoiseMode"),
    ],
)
def test_invalid_training_configs(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        fast(**kwargs)


def test_plan_that_understates_epsilon_or_mismatches_is_refused() -> None:
    cfg = fast()
    plan = plan_training(SMALL.num_rows, cfg)
    with pytest.raises(ConfigError, match="states epsilon"):
        quiet_train(SMALL, SPECS["logreg"], cfg, plan=replace(plan, epsilon=plan.epsilon / 2))
    with pytest.raises(ConfigError, match="does not match"):
        quiet_train(SMALL, SPECS["logreg"], cfg, plan=replace(plan, steps=plan.steps - 1))
    with pytest.raises(ConfigError, match="does not match"):
        quiet_train(SMALL, SPECS["logreg"], cfg, plan=replace(plan, noise_multiplier=2.0))


def test_training_config_from_toml() -> None:
    cfg = TrainingConfig.from_toml(
        '[training]\nepochs = 2\nbatch_size = 32\ntarget_epsilon = 3\naccountant = "rdp"\n'
        'noise = "secure"\n'
    )
    assert (cfg.epochs, cfg.target_epsilon, cfg.accountant.value) == (2, 3.0, "rdp")
    with pytest.raises(ConfigError, match="unknown key"):
        TrainingConfig.from_toml("[training]\nepoch = 2\n")
    with pytest.raises(ConfigError, match="malformed"):
        TrainingConfig.from_toml('[training]\nnoise_multiplier = 1.0\naccountant = "gdp"\n')
    with pytest.raises(ConfigError, match="must be a number"):
        TrainingConfig.from_toml('[training]\nnoise_multiplier = "1.0"\n')


def test_budgeted_job_charges_plan_then_keeps_it(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "b.sqlite")
    cfg = fast(epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureModeWarning)
        result = train_with_budget(ledger, "tenant", SMALL, SPECS["logreg"], cfg, job_id="j")
    [charge] = ledger.charges("tenant", SMALL.sha256)
    assert charge.settled and charge.epsilon == pytest.approx(result.record.epsilon)


def test_budgeted_job_over_budget_never_starts(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "b.sqlite", default_budget=BudgetConfig(0.5, 1e-5))
    events: list[ProgressEvent] = []
    with pytest.raises(PrivacyBudgetExceeded) as info:
        train_with_budget(
            ledger, "tenant", SMALL, SPECS["logreg"], fast(), job_id="j", progress=events.append
        )
    assert info.value.remaining_epsilon == 0.5
    assert events == [] and ledger.charges("tenant", SMALL.sha256) == []


def test_job_failing_midway_is_refunded_only_unstarted_steps(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "b.sqlite")
    cfg = fast(epochs=2)  # 12 steps
    plan = plan_training(SMALL.num_rows, cfg)

    def fail_at_step_5(event: ProgressEvent) -> None:
        if event.step == 5:
            raise RuntimeError("worker lost")

    with (
        pytest.raises(TrainingAborted, match="after starting 5 of 12 steps") as info,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", InsecureModeWarning)
        train_with_budget(
            ledger,
            "tenant",
            SMALL,
            SPECS["logreg"],
            cfg,
            job_id="j",
            progress=fail_at_step_5,
            progress_every=1,
        )
    assert info.value.steps_started == 5
    [charge] = ledger.charges("tenant", SMALL.sha256)
    assert charge.settled
    assert charge.epsilon == pytest.approx(plan.epsilon_after(5))
    assert charge.epsilon < plan.epsilon


def test_job_refused_before_training_is_fully_refunded(tmp_path: Path) -> None:
    ledger = BudgetLedger(tmp_path / "b.sqlite")
    with pytest.raises(ConfigError):
        train_with_budget(
            ledger, "tenant", SMALL, ModelSpec("logreg", (32,), 10), fast(), job_id="j"
        )
    [charge] = ledger.charges("tenant", SMALL.sha256)
    assert charge.settled and (charge.epsilon, charge.delta) == (0.0, 0.0)
