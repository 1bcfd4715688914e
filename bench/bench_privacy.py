"""Throughput of DP training: non-private vs plain Opacus default vs Veil's DP path.

For every built-in model, on the same data (scikit-learn digits, 1797 rows, 8x8) and the same
expected batch size, one run measures samples/s of
  * non-private SGD (same model, same batched tensor loader, shuffled fixed-size batches),
  * plain Opacus default: ``PrivacyEngine().make_private`` with hooks over a ``TensorDataset``
    ``DataLoader`` (Opacus' DPDataLoader, per-row fetch and collate),
  * Veil: ``veil.privacy.train`` (Poisson sampling, secure CSPRNG-reseeded noise, auto
    grad-sample mode),
and prints the ratios. All three run in this process with the same ``torch.set_num_threads``
(``--threads``, checked after every run), on the same tensors, interleaved. Veil draws each
step's secure noise one step ahead on a worker thread when the process may use two CPUs, so it
can use a core the other two leave idle: "1-thread veil" is the same run with that worker off
(everything on the calling thread), for comparison. For the CNN the
non-private baseline is the faster of NCHW and NHWC (channels-last) activations, since Veil's DP
path runs NHWC. ``--modes`` also times every grad-sample mode through ``veil.privacy.train``
(how ``choose_grad_sample_mode`` was decided).

    .venv/bin/python bench/bench_privacy.py [--epochs 4] [--repeats 25] [--batch-size 256] [--modes]
    .venv/bin/python bench/bench_privacy.py --accuracy   # the table in docs/PRIVACY.md
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from opacus import PrivacyEngine
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from veil.privacy import (
    GRAD_SAMPLE_MODES,
    Dataset,
    ModelSpec,
    NoiseMode,
    TrainingConfig,
    build_model,
    evaluate_accuracy,
    train,
)

SPECS = {
    "logreg": ModelSpec("logreg", (64,), 10),
    "mlp": ModelSpec("mlp", (64,), 10, hidden=(128, 64)),
    "cnn": ModelSpec("cnn", (1, 8, 8), 10, channels=(16, 32)),
}


def _to_nhwc(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
    return output.contiguous(memory_format=torch.channels_last)


def non_private(
    spec: ModelSpec, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int, nhwc: bool = False
) -> float:
    """Plain SGD. ``nhwc``: keep image activations channels-last (input and every convolution's
    output), the layout Veil's book-keeping path uses; pooling is much faster in it on CPU."""
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    crit = nn.CrossEntropyLoss()
    xs = x.reshape(-1, *spec.input_shape)
    if nhwc:
        xs = xs.contiguous(memory_format=torch.channels_last)
        for layer in model.modules():
            if isinstance(layer, nn.Conv2d):
                layer.register_forward_hook(_to_nhwc)
    n = xs.shape[0]
    start = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(n)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            opt.zero_grad(set_to_none=True)
            crit(model(xs[idx]), y[idx]).backward()
            opt.step()
    return n * epochs / (time.perf_counter() - start)


def opacus_default(
    spec: ModelSpec, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int
) -> float:
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loader = DataLoader(TensorDataset(x.reshape(-1, *spec.input_shape), y), batch_size=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine()
        model, opt, loader = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0
        )
    crit = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            crit(model(xb), yb).backward()
            opt.step()
    return x.shape[0] * epochs / (time.perf_counter() - start)


def veil(
    spec: ModelSpec,
    ds: Dataset,
    epochs: int,
    batch: int,
    mode: str = "auto",
    prefetch: bool | None = None,
) -> float:
    cfg = TrainingConfig(
        epochs=epochs,
        batch_size=batch,
        noise_multiplier=1.0,
        grad_sample_mode=mode,
        noise=NoiseMode.SECURE,
        seed=0,
    )
    result = train(ds, spec, cfg, prefetch_noise=prefetch)
    return ds.num_rows * epochs / result.train_seconds


def accuracy_table(x: np.ndarray, y: np.ndarray, seeds: int = 3) -> None:
    """Digits split 1400 train / 397 test; CNN 1x8x8 -> (16, 32); secure noise; mean of seeds."""
    train_ds = Dataset.from_arrays(x[:1400], y[:1400], sha256="digits-train")
    test_ds = Dataset.from_arrays(x[1400:], y[1400:], sha256="digits-test")
    spec = SPECS["cnn"]
    print("| epsilon (delta 1e-5) | noise multiplier | test accuracy (mean of 3) | min | max |")
    print("|---|---|---|---|---|")
    for eps in (1.0, 3.0, 8.0):
        accs = []
        sigma = 0.0
        for seed in range(seeds):
            cfg = TrainingConfig(
                epochs=15,
                batch_size=128,
                learning_rate=1.0,
                momentum=0.5,
                max_grad_norm=1.0,
                target_epsilon=eps,
                delta=1e-5,
                seed=seed,
            )
            result = train(train_ds, spec, cfg)
            sigma = result.record.noise_multiplier
            accs.append(evaluate_accuracy(result.model, test_ds, spec.input_shape))
        print(
            f"| {eps:g} | {sigma:.3f} | {np.mean(accs):.3f} | {min(accs):.3f} | {max(accs):.3f} |"
        )
    torch.manual_seed(0)
    model = build_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    crit = nn.CrossEntropyLoss()
    xs, ys = torch.from_numpy(x[:1400]).reshape(-1, 1, 8, 8), torch.from_numpy(y[:1400])
    for _ in range(15):
        perm = torch.randperm(1400)
        for i in range(0, 1400, 128):
            idx = perm[i : i + 128]
            opt.zero_grad()
            crit(model(xs[idx]), ys[idx]).backward()
            opt.step()
    print(f"| non-private | - | {evaluate_accuracy(model, test_ds, spec.input_shape):.3f} | | |")


def _ratio(num: list[float], den: list[float]) -> str:
    """Median (min-max) of the per-repeat ratios ``num[i] / den[i]``."""
    ratios = [n / d for n, d in zip(num, den, strict=True)]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", action="store_true", help="also time every grad-sample mode")
    ap.add_argument(
        "--models", default=",".join(SPECS), help="comma-separated subset of " + ",".join(SPECS)
    )
    ap.add_argument(
        "--accuracy",
        action="store_true",
        help="instead: test accuracy vs epsilon (1, 3, 8) of the built-in CNN",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    digits = load_digits()
    xn = (digits.data / 16.0).astype(np.float32)
    ds = Dataset.from_arrays(xn, digits.target, sha256="bench")
    if args.accuracy:
        accuracy_table(xn, digits.target)
        return
    x, y = torch.from_numpy(xn), torch.from_numpy(digits.target.astype(np.int64))
    print(
        f"digits rows={ds.num_rows} epochs={args.epochs} batch={args.batch_size} "
        f"threads={args.threads} repeats={args.repeats} torch={torch.__version__}"
    )
    print(
        "samples/s: best of the repeats; ratios: median (min-max) over the repeats of the ratio "
        "within each repeat"
    )
    print(
        f"{'model':8} {'non-private':>12} {'opacus-def':>11} {'veil-dp':>10} "
        f"{'veil/nonpriv':>18} {'veil/opacus':>12} {'1-thread veil/nonpriv':>22}"
    )
    for name in args.models.split(","):
        spec = SPECS[name]
        veil(spec, ds, 1, args.batch_size)  # warm-up (imports, allocator, first export)
        # Each repeat runs all of them back to back, and the ratios are taken within a repeat,
        # so a slow phase of the shared machine hits both sides of a ratio alike. Many short
        # repeats (default 25 x 4 epochs) rather than a few long ones: this machine's speed
        # drifts between phases, and the median of paired short runs is stable where a best-of
        # ratio of long runs is not.
        # The non-private baseline is the faster of the NCHW and NHWC layouts for image models
        # (Veil's DP path runs NHWC), so a layout gain is not counted as a DP gain.
        layouts = (False, True) if len(spec.input_shape) == 3 else (False,)
        base_by_layout: dict[bool, list[float]] = {nhwc: [] for nhwc in layouts}
        base, plain, ours, serial = [], [], [], []
        for _ in range(args.repeats):
            for nhwc in layouts:
                rate = non_private(spec, x, y, args.epochs, args.batch_size, nhwc)
                base_by_layout[nhwc].append(rate)
            base.append(max(rates[-1] for rates in base_by_layout.values()))
            plain.append(opacus_default(spec, x, y, args.epochs, args.batch_size))
            ours.append(veil(spec, ds, args.epochs, args.batch_size))
            serial.append(veil(spec, ds, args.epochs, args.batch_size, prefetch=False))
            if torch.get_num_threads() != args.threads:
                raise RuntimeError("a run changed torch's thread count; timings not comparable")
        print(
            f"{name:8} {max(base):12.0f} {max(plain):11.0f} {max(ours):10.0f} "
            f"{_ratio(ours, base):>18} {_ratio(ours, plain):>12} {_ratio(serial, base):>22}"
        )
        if len(layouts) > 1:
            print(
                f"    non-private NCHW {max(base_by_layout[False]):.0f}, "
                f"NHWC {max(base_by_layout[True]):.0f} samples/s (baseline: the faster)"
            )
        if args.modes:
            for mode in GRAD_SAMPLE_MODES:
                if mode == "functorch" and spec.kind == "cnn":
                    continue  # refused for convolutions (see veil.privacy._training)
                rate = max(
                    veil(spec, ds, args.epochs, args.batch_size, mode) for _ in range(args.repeats)
                )
                print(
                    f"    mode {mode:10} {rate:12.0f} samples/s  "
                    f"({rate / max(base):.2f}x best non-private)"
                )


if __name__ == "__main__":
    main()
