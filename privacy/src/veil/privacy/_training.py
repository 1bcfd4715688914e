"""DP-SGD training with Opacus: plan a job, train it, export ONNX, describe it in a record."""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
import tomllib
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
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
from torch.nn import functional as F
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
    "AuditedStep",
    "ProgressEvent",
    "TrainingAborted",
    "TrainingConfig",
    "TrainingPlan",
    "TrainingResult",
    "audit_step",
    "choose_grad_sample_mode",
    "default_device",
    "evaluate_accuracy",
    "plan_training",
    "poisson_schedule",
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


_Count = TypeVar("_Count", int, npt.NDArray[np.int64])


def poisson_schedule(num_rows: int, batch_size: _Count) -> tuple[_Count, _Count]:
    """``(steps_per_epoch, expected_batch_size)`` in integer arithmetic, no float round-off.

    ``steps_per_epoch`` is ``k = ceil(num_rows / batch_size)`` (the sample rate is exactly
    ``1 / k``) and ``expected_batch_size`` is ``floor(num_rows / k)`` (at least 1): what Opacus
    computes as ``int(num_rows * sample_rate)``, which round-off makes 0 for e.g. 49 rows in
    batches of 1. Works elementwise on integer numpy arrays too. Raises ``ConfigError`` unless
    both are at least 1.
    """
    if np.any(np.asarray(num_rows) < 1) or np.any(np.asarray(batch_size) < 1):
        raise ConfigError("a Poisson schedule needs at least one row and a batch size of 1 or more")
    k = -(-num_rows // batch_size)
    return k, num_rows // k


def _schedule(num_rows: int, config: TrainingConfig) -> tuple[float, int, int]:
    if num_rows < 1:
        raise ConfigError("cannot plan training on an empty dataset")
    k, _ = poisson_schedule(num_rows, config.batch_size)
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


def default_device() -> torch.device:
    """Where training runs unless told: the current CUDA device when torch sees a GPU, else the
    CPU. Under torch.distributed only the NCCL backend trains on GPUs (gloo: CPU)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_backend() != "nccl":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass(frozen=True)
class _Private:
    """A model made private: the module to run, the DP optimizer, the clipped-sum step, and the
    loader Opacus wrapped (``None`` for ``bk``, which samples itself)."""

    model: nn.Module
    optimizer: Any
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    loader: Any


def _make_private(
    net: nn.Module,
    mode: str,
    *,
    optimizer: str,
    learning_rate: float,
    momentum: float,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    noise: NoiseSource,
    engine: PrivacyEngine,
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]],
    world: int,
) -> _Private:
    """The DP-SGD machinery of one job (``train``) or one audited step (``audit_step``)."""
    module: nn.Module = DPDDP(net) if world > 1 else net
    base: torch.optim.Optimizer
    if optimizer == "sgd":
        base = torch.optim.SGD(module.parameters(), lr=learning_rate, momentum=momentum)
    else:
        base = torch.optim.Adam(module.parameters(), lr=learning_rate)
    # Each process's share of the expected batch (exact: see poisson_schedule).
    expected: float = expected_batch_size / world if world > 1 else expected_batch_size
    if mode == "bk":
        if not supports_bookkeeping(net):
            raise ConfigError(
                "grad_sample_mode 'bk' needs a model of Conv2d, Linear and parameter-free layers"
            )
        # What make_private would build for ghost clipping, with our clipper instead of its
        # two-pass criterion: the fast-gradient-clipping optimizer adds noise (rank 0 only
        # under DDP), scales by the expected batch size and steps Opacus' accountant. In one
        # process it is our FusedNoiseOptimizer (same arithmetic, fused noise, no copies).
        opt_cls: type[DPOptimizerFastGradientClipping] = FusedNoiseOptimizer
        if world > 1:
            opt_cls = DistributedDPOptimizerFastGradientClipping
        dp_opt = opt_cls(
            base,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected,
            loss_reduction="mean",
            generator=noise.noise,
        )
        return _Private(module, dp_opt, BookKeepingClipper(net, max_grad_norm), None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        made = engine.make_private(
            module=module,
            optimizer=base,
            criterion=nn.CrossEntropyLoss(),
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=False,
            noise_generator=noise.noise,
            grad_sample_mode=mode,
        )
    if len(made) == 4:
        dp_model, dp_opt, criterion, dp_loader = made
    else:
        dp_model, dp_opt, dp_loader = made
        criterion = nn.CrossEntropyLoss()
    # Opacus computed int(rows * sample_rate), which float round-off can make 0.
    dp_opt.expected_batch_size = expected
    return _Private(dp_model, dp_opt, _finite_step(dp_model, dp_opt, criterion, mode), dp_loader)


def _finite_step(
    dp_model: nn.Module, dp_opt: Any, criterion: Any, mode: str
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Opacus' per-sample gradients for a batch, with every sample whose loss or gradient norm
    is not finite left out (the batch recomputed without it): its contribution is exactly zero
    and nothing non-finite reaches the clipped sum. Returns the mean loss (detached)."""

    def attempt(xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if mode == "ghost":
            # Opacus' DPTensorFastGradientClipping: backward() runs its two passes.
            loss = criterion(dp_model(xb), yb)
            per = loss.loss_per_sample.detach()
            loss.backward()
            norms = cast(torch.Tensor, dp_model.per_sample_gradient_norms)
        else:
            per_sample = F.cross_entropy(dp_model(xb), yb, reduction="none")
            per = per_sample.detach()
            # what CrossEntropyLoss() (mean) back-propagates
            torch.autograd.backward(per_sample.mean())
            flat = [g.reshape(len(g), -1).norm(2, dim=-1) for g in dp_opt.grad_samples]
            norms = torch.stack(flat, dim=1).norm(2, dim=1)  # as Opacus' clip_and_accumulate
        return per.mean(), torch.isfinite(per) & torch.isfinite(norms)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        while xb.shape[0]:
            loss, finite = attempt(xb, yb)
            if bool(finite.all()):
                return loss
            dp_opt.zero_grad(set_to_none=True)
            xb, yb = xb[finite], yb[finite]
        # An empty batch: Opacus' own path (noise on a zero gradient).
        empty = criterion(dp_model(xb), yb)
        empty.backward()
        detached: torch.Tensor = empty.detach()
        return detached

    return step


@dataclass(frozen=True)
class AuditedStep:
    """One DP-SGD step as :func:`train` takes it, for third-party checks of the mechanism.

    ``clipped_sum``: per parameter name, the sum over the batch of the per-sample gradients,
    each clipped to ``max_grad_norm`` (a sample with a non-finite loss or norm contributes 0),
    before noise. ``update``: the gradient the optimizer then applies, ``(clipped_sum + noise) /
    expected_batch_size``. ``loss``: the batch's mean loss over the samples that contributed.
    """

    clipped_sum: dict[str, torch.Tensor]
    update: dict[str, torch.Tensor]
    expected_batch_size: int
    loss: float


def audit_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    noise: NoiseSource,
    grad_sample_mode: str = "bk",
    expected_batch_size: int | None = None,
) -> AuditedStep:
    """Run one DP-SGD step of ``model`` (a copy; ``model`` is untouched) on the batch ``x``,
    ``y`` with the noise of ``noise`` (inject ``NoiseSource.fast(seed)`` or a source whose
    generators you built), through the code :func:`train` runs in ``grad_sample_mode``.

    ``expected_batch_size`` defaults to the batch's size; ``noise_multiplier`` may be 0 (no
    noise: ``update`` is then ``clipped_sum / expected_batch_size``). Runs on the noise
    source's device. Raises ``ConfigError`` on a bad argument.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigError(f"grad_sample_mode {grad_sample_mode!r} unknown; use {GRAD_SAMPLE_MODES}")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ConfigError(f"max_grad_norm {max_grad_norm} must be positive")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ConfigError(f"noise_multiplier {noise_multiplier} must be zero or positive")
    rows = int(x.shape[0])
    if int(y.shape[0]) != rows:
        raise ConfigError(f"the batch has {rows} rows but {int(y.shape[0])} labels")
    expected = rows if expected_batch_size is None else expected_batch_size
    if isinstance(expected, bool) or not isinstance(expected, int) or expected < 1:
        raise ConfigError(f"expected_batch_size must be a positive integer, got {expected!r}")
    device = noise.device
    net = copy.deepcopy(model).to(device)
    xb, yb = x.to(device), y.to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor]] = DataLoader(
        _Rows(xb, yb), batch_size=max(rows, 1), collate_fn=_as_batch
    )
    private = _make_private(
        net,
        grad_sample_mode,
        optimizer="sgd",
        learning_rate=1.0,
        momentum=0.0,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected,
        noise=noise,
        engine=engine,
        loader=loader,
        world=1,
    )
    dp_opt = private.optimizer
    dp_opt.secure_mode = noise.is_secure
    stream: NoiseStream | None = None
    if noise.is_secure and isinstance(dp_opt, FusedNoiseOptimizer):
        stream = dp_opt.use_noise_stream(noise, prefetch=False, steps=1)
    try:
        private.model.train()
        dp_opt.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            loss = private.step(xb, yb)
        if stream is None:
            noise.before_noise()
        dp_opt.pre_step()
    finally:
        if stream is not None:
            stream.close()
    params: dict[str, Any] = dict(net.named_parameters())  # Opacus adds summed_grad
    return AuditedStep(
        clipped_sum={n: p.summed_grad.detach().clone() for n, p in params.items()},
        update={n: p.grad.detach().clone() for n, p in params.items()},
        expected_batch_size=expected,
        loss=float(loss),
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
    device: torch.device | str | None = None,
    weight_hook: Callable[[nn.Module], None] | None = None,
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
    ``device``: where the model trains and the noise is drawn; default: the device of a given
    ``noise`` source, else :func:`default_device` (CUDA when a GPU is present). A given
    ``noise`` must draw its noise on that device.
    A sample whose loss or per-sample gradient norm is not finite contributes nothing to its
    step (see :class:`~veil.privacy._bookkeeping.BookKeepingClipper`), in every mode.
    ``weight_hook``: a regulariser called with the model at every step, after the private
    gradient (clipped, noised, averaged) is in each parameter's ``.grad`` and before the update;
    it may add to ``.grad`` a term computed from the WEIGHTS ONLY (e.g. a watermark
    regulariser). Reading no data, it is post-processing: the accounting is unchanged.
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
    if device is not None:
        device = torch.device(device)
    elif noise is not None:
        device = noise.device
    else:
        device = default_device()
    if noise is None:
        if config.noise is NoiseMode.SECURE:
            noise = NoiseSource.secure(device=device)
        else:
            assert config.seed is not None
            noise = NoiseSource.fast(config.seed, rank=rank, device=device)
    if noise.device.type != device.type:
        raise ConfigError(
            f"the noise source draws on {noise.device.type} but training runs on {device.type}"
        )
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
    net = net.to(device)
    x = torch.from_numpy(dataset.features).reshape(-1, *spec.input_shape).to(device)
    y = torch.from_numpy(dataset.labels).to(device)
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
    _, expected = poisson_schedule(dataset.num_rows, config.batch_size)
    with warnings.catch_warnings():
        # Opacus warns that its torchcsprng secure_mode is off; NoiseSource replaces it.
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant=plan.accountant.value, secure_mode=False)
    private = _make_private(
        net,
        mode,
        optimizer=config.optimizer,
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=config.max_grad_norm,
        expected_batch_size=expected,
        noise=noise,
        engine=engine,
        loader=loader,
        world=world,
    )
    dp_model, dp_opt, step_fn = private.model, private.optimizer, private.step
    if weight_hook is not None:
        hook = weight_hook  # runs when Opacus hands the private gradient to the optimizer
        dp_opt.original_optimizer.register_step_pre_hook(lambda *_: hook(net))
    stream: NoiseStream | None = None
    dp_loader: Any = _Batches(rows, sampler) if mode == "bk" else private.loader
    if mode == "bk":
        dp_opt.attach_step_hook(
            engine.accountant.get_optimizer_hook_fn(sample_rate=1.0 / len(dp_loader))
        )

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
                    if xb.shape[0] and math.isfinite(value := float(loss)):
                        loss_value = value
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
        feature_min=dataset.feature_range[0],
        feature_max=dataset.feature_range[1],
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        optimizer=config.optimizer,
        grad_sample_mode=mode,
        secure_rng=noise.is_secure,
        world_size=world,
        device=device.type,
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
