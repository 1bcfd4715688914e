"""DP-SGD training with Opacus: plan a job, train it, export ONNX, describe it in a record."""

from __future__ import annotations

import hashlib
import math
import os
import time
import tomllib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import opacus
import torch
from opacus import PrivacyEngine
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
from opacus.optimizers import (
    DistributedDPOptimizerFastGradientClipping,
    DPOptimizerFastGradientClipping,
)
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader

from veil.sdk import TrainingProgress
from veil.sdk.errors import ConfigError, VeilError

from ._accounting import AccountantKind, compute_epsilon, find_noise_multiplier
from ._bookkeeping import BookKeepingClipper, supports_bookkeeping
from ._datasets import Dataset
from ._dpoptim import FusedNoiseOptimizer, NoiseStream
from ._export import export_onnx
from ._models import ModelSpec, build_model
from ._noise import NoiseMode, NoiseSource
from ._record import TrainingRecord

__all__ = [
    "GRAD_SAMPLE_MODES",
    "ProgressEvent",
    "TrainingAborted",
    "TrainingConfig",
    "TrainingPlan",
    "TrainingResult",
    "choose_grad_sample_mode",
    "plan_training",
    "evaluate_accuracy",
    "train",
]

# Per-sample-gradient modes that train correctly under Poisson sampling. Opacus 1.6's expanded
# weights ("ew") raise on the empty batches Poisson sampling produces ("Batch size must be
# positive"), and so does "functorch" on convolutions; they are not offered (resp. refused).
# "bk" is our book-keeping ghost clipping for Conv2d/Linear stacks (see _bookkeeping.py).
GRAD_SAMPLE_MODES = ("bk", "hooks", "functorch", "ghost")

# Fastest correct mode per built-in model on CPU, measured with bench/bench_privacy.py
# (--modes prints every mode's samples/s so the choice can be re-checked on new hardware).
_FASTEST_MODE = {"logreg": "bk", "mlp": "bk", "cnn": "bk"}


# Below this many parameters a secure noise draw costs less than handing it between threads
# (bench/bench_privacy.py on a 2-core CPU: logreg, 650 parameters, ran slower with the noise
# worker; the CNN, 5k, the same; the MLP, 17k, faster).
PREFETCH_MIN_PARAMS = 8192


class TrainingAborted(VeilError):
    """Training stopped before its last step; ``steps_started`` steps touched the data.

    The budget ledger refunds only the steps that never started (see ``BudgetLedger.settle``).
    """

    def __init__(self, message: str, *, steps_started: int) -> None:
        super().__init__(message)
        self.steps_started = steps_started


@dataclass(frozen=True)
class TrainingConfig:
    """How to train. Give exactly one of ``target_epsilon`` and ``noise_multiplier``.

    ``batch_size`` is the *expected* batch size: batches are Poisson-sampled at rate
    ``1 / ceil(rows / batch_size)``, so one epoch is ``ceil(rows / batch_size)`` steps.
    ``seed`` fixes model initialisation and, in fast noise mode, the random streams.
    """

    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 0.5
    optimizer: str = "sgd"
    momentum: float = 0.0
    max_grad_norm: float = 1.0
    delta: float = 1e-6
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    accountant: AccountantKind = AccountantKind.PRV
    grad_sample_mode: str = "auto"
    noise: NoiseMode = NoiseMode.SECURE
    seed: int | None = None

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "seed"):
            value = getattr(self, key)
            if (value is not None or key != "seed") and (
                isinstance(value, bool) or not isinstance(value, int)
            ):
                raise ConfigError(f"training config {key} must be an integer, got {value!r}")
        for key in ("optimizer", "grad_sample_mode"):
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"training config {key} must be a string")
        if not isinstance(self.accountant, AccountantKind) or not isinstance(self.noise, NoiseMode):
            raise ConfigError("training config accountant/noise must be AccountantKind/NoiseMode")
        if self.epochs < 1:
            raise ConfigError(f"epochs is {self.epochs}; need at least 1")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size is {self.batch_size}; need at least 1")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate {self.learning_rate} must be positive")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"optimizer {self.optimizer!r} unsupported; use 'sgd' or 'adam'")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum {self.momentum} must be in [0, 1)")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ConfigError(f"max_grad_norm {self.max_grad_norm} must be positive")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta {self.delta} must be in (0, 1)")
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ConfigError("give exactly one of target_epsilon and noise_multiplier")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ConfigError(f"target_epsilon {self.target_epsilon} must be positive")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(f"noise_multiplier {self.noise_multiplier} must be positive")
        if self.grad_sample_mode not in ("auto", *GRAD_SAMPLE_MODES):
            raise ConfigError(
                f"grad_sample_mode {self.grad_sample_mode!r} unknown; use auto or one of "
                f"{GRAD_SAMPLE_MODES}"
            )
        if self.noise is NoiseMode.FAST and self.seed is None:
            raise ConfigError("fast (seeded) noise needs a seed")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> TrainingConfig:
        """Build from a TOML table / JSON object; unknown keys are refused."""
        names = set(cls.__dataclass_fields__)
        unknown = set(raw) - names
        if unknown:
            raise ConfigError(f"training config has unknown key(s) {sorted(unknown)}")
        kwargs = dict(raw)
        try:
            if "accountant" in kwargs:
                kwargs["accountant"] = AccountantKind(kwargs["accountant"])
            if "noise" in kwargs:
                kwargs["noise"] = NoiseMode(kwargs["noise"])
            for key in (
                "learning_rate",
                "momentum",
                "max_grad_norm",
                "delta",
                "target_epsilon",
                "noise_multiplier",
            ):
                value = kwargs.get(key)
                if value is not None:
                    if isinstance(value, bool) or not isinstance(value, int | float):
                        raise ConfigError(f"training config {key} must be a number, got {value!r}")
                    kwargs[key] = float(value)
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"training config is malformed: {exc}") from exc

    @classmethod
    def from_toml(cls, text: str | bytes) -> TrainingConfig:
        """Parse the ``[training]`` table of a TOML document (or its top level)."""
        try:
            doc = tomllib.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"training config is not valid TOML: {exc}") from exc
        table = doc.get("training", doc)
        if not isinstance(table, dict):
            raise ConfigError("training config [training] must be a table")
        return cls.from_mapping(table)


@dataclass(frozen=True)
class TrainingPlan:
    """The privacy-relevant schedule of a job, fixed before it starts (and before it is charged)."""

    noise_multiplier: float
    sample_rate: float
    steps_per_epoch: int
    steps: int
    delta: float
    epsilon: float
    accountant: AccountantKind

    def epsilon_after(self, steps: int) -> float:
        """Epsilon spent if only the first ``steps`` steps run."""
        return compute_epsilon(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=min(steps, self.steps),
            delta=self.delta,
            accountant=self.accountant,
        )


ProgressEvent = TrainingProgress
"""Reported after a step: :class:`veil.sdk.TrainingProgress` (one type, defined in the SDK)."""


@dataclass(frozen=True)
class TrainingResult:
    """ONNX bytes to serve, the record to sign, the trained torch model (eval mode), and the
    wall-clock seconds the DP training loop took (for benchmarks; not part of the record)."""

    onnx: bytes
    record: TrainingRecord
    model: nn.Module
    train_seconds: float


def _schedule(num_rows: int, config: TrainingConfig) -> tuple[float, int, int]:
    if num_rows < 1:
        raise ConfigError("cannot plan training on an empty dataset")
    k = max(1, math.ceil(num_rows / config.batch_size))
    return 1.0 / k, k, k * config.epochs


def plan_training(num_rows: int, config: TrainingConfig) -> TrainingPlan:
    """Fix the schedule: sample rate ``1/k`` with ``k = ceil(rows / batch_size)``, ``k`` steps per
    epoch, and the noise multiplier (given, or the smallest reaching ``target_epsilon``)."""
    sample_rate, k, steps = _schedule(num_rows, config)
    if config.noise_multiplier is not None:
        sigma = config.noise_multiplier
    else:
        assert config.target_epsilon is not None
        sigma = find_noise_multiplier(
            target_epsilon=config.target_epsilon,
            sample_rate=sample_rate,
            steps=steps,
            delta=config.delta,
            accountant=config.accountant,
        )
    eps = compute_epsilon(
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=steps,
        delta=config.delta,
        accountant=config.accountant,
    )
    return TrainingPlan(sigma, sample_rate, k, steps, config.delta, eps, config.accountant)


def choose_grad_sample_mode(spec: ModelSpec) -> str:
    """The per-sample-gradient mode measured fastest on CPU for this built-in model."""
    if spec.norm != "none":
        # GroupNorm has parameters: book-keeping does not cover it
        return "ghost" if spec.kind == "mlp" else "hooks"
    return _FASTEST_MODE[spec.kind]


class _Rows(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Tensor rows with batched fetch (``__getitems__``): one gather per batch, no per-row
    Python work."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[idx], self.y[idx]


def _as_batch(b: Any) -> Any:
    return b


class _PoissonSampler(UniformWithReplacementSampler):  # type: ignore[misc]
    """Opacus' Poisson sampler (each row independently with probability ``sample_rate``, one
    batch per step, empty batches kept) over this process's shard, reseeding before each draw."""

    def __init__(
        self, *, shard: torch.Tensor, sample_rate: float, steps: int, noise: NoiseSource
    ) -> None:
        super().__init__(
            num_samples=int(shard.shape[0]),
            sample_rate=sample_rate,
            generator=noise.sampling,
            steps=steps,
        )
        self._shard = shard
        self._noise = noise
        # One process: the shard is every row, so the sampled positions are the row indices.
        self._whole = bool(torch.equal(shard, torch.arange(int(shard.shape[0]))))

    def __iter__(self) -> Iterator[torch.Tensor]:
        for _ in range(self.steps):
            self._noise.before_sampling()
            mask = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
            yield mask.nonzero().squeeze_(1) if self._whole else self._shard[mask]


class _Batches:
    """The sampler's Poisson batches gathered straight from the row tensors: what the
    ``DataLoader`` over ``_Rows`` yields, without its per-batch machinery (used by ``bk``)."""

    def __init__(self, rows: _Rows, sampler: _PoissonSampler) -> None:
        self._rows, self._sampler = rows, sampler

    def __len__(self) -> int:
        return len(self._sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self._sampler:
            yield self._rows.__getitems__(idx)


def _spare_cpu() -> bool:
    """True when this process may run on more than one CPU (a noise worker can overlap)."""
    try:
        return len(os.sched_getaffinity(0)) > 1
    except AttributeError:  # not Linux
        return (os.cpu_count() or 1) > 1


def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _check_plan(plan: TrainingPlan, num_rows: int, config: TrainingConfig) -> None:
    """Refuse a plan that is not this job's schedule or under-states its epsilon (the ledger
    was charged with ``plan.epsilon``; the run must not spend more)."""
    q, k, steps = _schedule(num_rows, config)
    given_sigma = config.noise_multiplier
    if (
        (plan.sample_rate, plan.steps_per_epoch, plan.steps) != (q, k, steps)
        or (plan.delta, plan.accountant) != (config.delta, config.accountant)
        or (given_sigma is not None and plan.noise_multiplier != given_sigma)
    ):
        raise ConfigError("training plan does not match this dataset and config")
    spent = compute_epsilon(
        noise_multiplier=plan.noise_multiplier,
        sample_rate=q,
        steps=steps,
        delta=plan.delta,
        accountant=plan.accountant,
    )
    if plan.epsilon < spent:
        raise ConfigError(
            f"training plan states epsilon {plan.epsilon:.4g} but its schedule spends {spent:.4g}"
        )


def train(
    dataset: Dataset,
    spec: ModelSpec,
    config: TrainingConfig,
    *,
    plan: TrainingPlan | None = None,
    noise: NoiseSource | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    progress_every: int = 0,
    prefetch_noise: bool | None = None,
) -> TrainingResult:
    """Train ``spec`` on ``dataset`` with DP-SGD and return ONNX bytes plus the training record.

    ``plan`` defaults to ``plan_training(dataset.num_rows, config)``; pass the plan you charged to
    the budget ledger. ``noise`` defaults from ``config.noise`` (secure: CSPRNG-reseeded). Under
    an initialised ``torch.distributed`` process group (e.g. ``torchrun``) the model is wrapped
    in Opacus' DPDDP: each rank Poisson-samples its shard of rows at the same rate, noise is added
    on rank 0 only, and the accounting is that of the single-process run.
    ``progress`` is called every ``progress_every`` steps (0: at each epoch end) and at the end.
    ``prefetch_noise``: draw the next step's secure noise on a worker thread while this step
    computes (``bk`` mode in one process); default: for models of at least
    ``PREFETCH_MIN_PARAMS`` parameters when this process may use two CPUs.
    Raises ``TrainingAborted`` (with ``steps_started``) if anything fails mid-run.
    """
    if dataset.num_classes > spec.num_classes:
        raise ConfigError(
            f"dataset has {dataset.num_classes} classes but the model outputs {spec.num_classes}"
        )
    per_row = math.prod(dataset.feature_shape)
    if per_row != spec.input_size:
        raise ConfigError(
            f"dataset rows have {per_row} features but the model expects shape {spec.input_shape}"
        )
    plan = plan or plan_training(dataset.num_rows, config)
    _check_plan(plan, dataset.num_rows, config)
    rank, world = _world()
    if noise is None:
        if config.noise is NoiseMode.SECURE:
            noise = NoiseSource.secure()
        else:
            assert config.seed is not None
            noise = NoiseSource.fast(config.seed, rank=rank)
    noise.announce()
    mode = (
        choose_grad_sample_mode(spec)
        if config.grad_sample_mode == "auto"
        else config.grad_sample_mode
    )
    if mode == "functorch" and spec.kind == "cnn":
        raise ConfigError(
            "grad_sample_mode 'functorch' fails on empty Poisson batches of "
            "convolutions; use bk, hooks or ghost for the cnn"
        )

    with torch.random.fork_rng(devices=[]):  # seed initialisation without touching global RNG
        if config.seed is not None:
            torch.manual_seed(config.seed)
        net = build_model(spec)
    x = torch.from_numpy(dataset.features).reshape(-1, *spec.input_shape)
    y = torch.from_numpy(dataset.labels)
    sampler = _PoissonSampler(
        shard=torch.arange(rank, dataset.num_rows, world),
        sample_rate=plan.sample_rate,
        steps=plan.steps_per_epoch,
        noise=noise,
    )
    rows = _Rows(x, y)
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] = DataLoader(
        rows, batch_sampler=sampler, collate_fn=_as_batch
    )

    module: nn.Module = DPDDP(net) if world > 1 else net
    optimizer: torch.optim.Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(
            module.parameters(), lr=config.learning_rate, momentum=config.momentum
        )
    else:
        optimizer = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
    with warnings.catch_warnings():
        # Opacus warns that its torchcsprng secure_mode is off; NoiseSource replaces it.
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant=plan.accountant.value, secure_mode=False)
    step_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    stream: NoiseStream | None = None
    if mode == "bk":
        if not supports_bookkeeping(net):
            raise ConfigError(
                "grad_sample_mode 'bk' needs a model of Conv2d, Linear and parameter-free layers"
            )
        # What make_private would build for ghost clipping, with our clipper instead of its
        # two-pass criterion: the fast-gradient-clipping optimizer adds noise (rank 0 only
        # under DDP), scales by the expected batch size and steps Opacus' accountant. In one
        # process it is our FusedNoiseOptimizer (same arithmetic, fused noise, no copies).
        expected_batch: float = int(dataset.num_rows * plan.sample_rate)
        opt_cls: type[DPOptimizerFastGradientClipping] = FusedNoiseOptimizer
        if world > 1:
            expected_batch /= world
            opt_cls = DistributedDPOptimizerFastGradientClipping
        dp_opt = opt_cls(
            optimizer,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            expected_batch_size=expected_batch,
            loss_reduction="mean",
            generator=noise.noise,
        )
        dp_opt.attach_step_hook(
            engine.accountant.get_optimizer_hook_fn(sample_rate=1.0 / len(loader))
        )
        step_fn = BookKeepingClipper(net, config.max_grad_norm)
        dp_loader = _Batches(rows, sampler)
        dp_model: nn.Module = module
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            made = engine.make_private(
                module=module,
                optimizer=optimizer,
                criterion=nn.CrossEntropyLoss(),
                data_loader=loader,
                noise_multiplier=plan.noise_multiplier,
                max_grad_norm=config.max_grad_norm,
                poisson_sampling=False,
                noise_generator=noise.noise,
                grad_sample_mode=mode,
            )
        if len(made) == 4:
            dp_model, dp_opt, criterion, dp_loader = made
        else:
            dp_model, dp_opt, dp_loader = made
            criterion = nn.CrossEntropyLoss()

        def step_fn(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            # Under ghost clipping this is Opacus' DPTensorFastGradientClipping, whose
            # backward() runs its two passes; keep the method call.
            loss = criterion(dp_model(xb), yb)
            loss.backward()
            detached: torch.Tensor = loss.detach()
            return detached

    # Opacus took the loader's length as 1/sample_rate; it must be exactly our plan's rate.
    if 1.0 / len(dp_loader) != plan.sample_rate:
        raise VeilError("Opacus sample rate disagrees with the training plan")
    dp_opt.secure_mode = noise.is_secure  # Opacus' floating-point-attack-resistant noise

    bounds: dict[int, float] = {}

    def epoch_bound(epoch: int) -> float:
        # Epsilon after this epoch's last step: an upper bound on what is spent so far, exact
        # at epoch ends, computed once per epoch (PRV takes ~0.1-1 s) so progress stays cheap.
        if epoch not in bounds:
            end = (epoch + 1) * plan.steps_per_epoch
            bounds[epoch] = compute_epsilon(
                noise_multiplier=plan.noise_multiplier,
                sample_rate=plan.sample_rate,
                steps=end,
                delta=plan.delta,
                accountant=plan.accountant,
                precise=end == plan.steps,
            )
        return bounds[epoch]

    steps_started = 0
    loss_value = float("nan")
    if noise.is_secure and isinstance(dp_opt, FusedNoiseOptimizer):
        # The stream reseeds before each draw; with a spare CPU it draws the next step's noise
        # while this step's gradients are computed.
        if prefetch_noise is None:
            numel = sum(p.numel() for p in net.parameters())
            prefetch_noise = numel >= PREFETCH_MIN_PARAMS and _spare_cpu()
        stream = dp_opt.use_noise_stream(noise, prefetch=prefetch_noise, steps=plan.steps)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # Ghost clipping's second backward pass trips a benign torch hook warning every step.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            dp_model.train()
            for epoch in range(config.epochs):
                for xb, yb in dp_loader:
                    steps_started += 1
                    dp_opt.zero_grad(set_to_none=True)
                    loss = step_fn(xb, yb)
                    if stream is None:  # Opacus draws: reseed its generator first
                        noise.before_noise()
                    dp_opt.step()
                    if xb.shape[0]:
                        loss_value = float(loss)
                    every = progress_every or plan.steps_per_epoch
                    if progress is not None and (
                        steps_started % every == 0 or steps_started == plan.steps
                    ):
                        eps_bound = epoch_bound(epoch)
                        progress(
                            ProgressEvent(epoch, steps_started, plan.steps, loss_value, eps_bound)
                        )
    except Exception as exc:
        raise TrainingAborted(
            f"training stopped after starting {steps_started} of {plan.steps} steps: {exc}",
            steps_started=steps_started,
        ) from exc
    finally:
        if stream is not None:
            stream.close()

    train_seconds = time.perf_counter() - started
    ran = sum(n for _, _, n in engine.accountant.history)
    if ran != plan.steps or steps_started != plan.steps:
        raise TrainingAborted(
            f"Opacus accounted {ran} steps but the plan has {plan.steps}",
            steps_started=steps_started,
        )
    try:
        clean = build_model(spec)
        clean.load_state_dict(net.state_dict())
        onnx_bytes = export_onnx(clean, spec.input_shape)
    except Exception as exc:
        # Every step ran: the budget must stay spent even though no model comes out.
        raise TrainingAborted(
            f"training finished but export failed: {exc}", steps_started=steps_started
        ) from exc
    record = TrainingRecord(
        model=spec.name,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=plan.steps,
        delta=plan.delta,
        epsilon=plan.epsilon,
        accountant=plan.accountant.value,
        max_grad_norm=config.max_grad_norm,
        dataset_sha256=dataset.sha256,
        num_rows=dataset.num_rows,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        optimizer=config.optimizer,
        grad_sample_mode=mode,
        secure_rng=noise.is_secure,
        world_size=world,
        model_sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        opacus_version=str(opacus.__version__),
        torch_version=str(torch.__version__),
    )
    return TrainingResult(
        onnx=onnx_bytes, record=record, model=clean.eval(), train_seconds=train_seconds
    )


def evaluate_accuracy(model: nn.Module, dataset: Dataset, input_shape: tuple[int, ...]) -> float:
    """Fraction of ``dataset`` rows the model classifies correctly."""
    with torch.no_grad():
        x = torch.from_numpy(dataset.features).reshape(-1, *input_shape)
        pred = model.eval()(x).argmax(dim=1).numpy()
    return float(np.mean(pred == dataset.labels))
