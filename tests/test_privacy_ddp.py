"""Scale-out: DP training over 2 torchrun processes (gloo, DPDDP) vs the single-process run.

What "matches" means. The accounting must be *identical*: same noise multiplier, sample rate,
steps and therefore the same epsilon, because each rank Poisson-samples its shard of rows at the
job's rate (the union is one Poisson sample of the whole dataset) and only rank 0 adds noise.
The trained model must agree up to float summation order: we use sample rate 1 (batch size =
rows), so every row is in every batch on both sides, the clipped per-sample gradients are the
same, rank 0 draws the same seeded noise as the single process, and DPDDP averages
(sum_rank0 + noise + sum_rank1) / rows exactly as the single process computes (sum + noise) /
rows. Parameters then differ only by float rounding (we allow 1e-5 on the logits).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits

from veil.privacy import (
    INPUT_NAME,
    ModelSpec,
    TrainingConfig,
    TrainingRecord,
    load_dataset,
    train,
)
from veil.sdk.errors import InsecureModeWarning

REPO = Path(__file__).resolve().parents[1]


MLP = {"kind": "mlp", "input_shape": [64], "num_classes": 10, "hidden": [16]}
CNN = {"kind": "cnn", "input_shape": [1, 8, 8], "num_classes": 10, "channels": [4, 8]}


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("mode", "model"), [("bk", MLP), ("hooks", MLP), ("bk", CNN)])
def test_two_process_dpddp_matches_single_process(
    tmp_path: Path, mode: str, model: dict[str, object]
) -> None:
    digits = load_digits()
    buf = io.BytesIO()
    np.savez(buf, x=(digits.data[:240] / 16.0).astype(np.float32), y=digits.target[:240])
    data = buf.getvalue()
    (tmp_path / "train.npz").write_bytes(data)
    training = {
        "epochs": 4,
        "batch_size": 240,
        "learning_rate": 0.5,
        "noise_multiplier": 0.8,
        "max_grad_norm": 1.0,
        "noise": "fast",
        "seed": 11,
        "grad_sample_mode": mode,
    }
    job = {
        "dataset": str(tmp_path / "train.npz"),
        "format": "npz",
        "model": model,
        "training": training,
    }
    (tmp_path / "job.json").write_text(json.dumps(job))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "veil.privacy.distributed",
            str(tmp_path / "job.json"),
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp_record = TrainingRecord.from_json((tmp_path / "out" / "record.json").read_bytes())
    ddp_onnx = (tmp_path / "out" / "model.onnx").read_bytes()

    dataset = load_dataset(data, "npz")
    spec = ModelSpec.from_mapping(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureModeWarning)
        single = train(dataset, spec, TrainingConfig.from_mapping(training))

    # Accounting: identical.
    assert ddp_record.world_size == 2 and single.record.world_size == 1
    for field in (
        "noise_multiplier",
        "sample_rate",
        "steps",
        "delta",
        "epsilon",
        "accountant",
        "dataset_sha256",
        "model",
        "grad_sample_mode",
        "max_grad_norm",
    ):
        assert getattr(ddp_record, field) == getattr(single.record, field), field
    assert ddp_record.steps == 4 and ddp_record.sample_rate == 1.0

    # Model: equal up to float summation order.
    x = dataset.features.reshape(-1, *spec.input_shape)
    ddp_logits = ort.InferenceSession(ddp_onnx, providers=["CPUExecutionProvider"]).run(
        None, {INPUT_NAME: x}
    )[0]
    single_logits = ort.InferenceSession(single.onnx, providers=["CPUExecutionProvider"]).run(
        None, {INPUT_NAME: x}
    )[0]
    np.testing.assert_allclose(ddp_logits, single_logits, atol=1e-5, rtol=1e-5)
    # The tolerance is meaningful: another noise seed gives clearly different logits.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureModeWarning)
        reseeded = train(dataset, spec, TrainingConfig.from_mapping({**training, "seed": 12}))
    other_logits = ort.InferenceSession(reseeded.onnx, providers=["CPUExecutionProvider"]).run(
        None, {INPUT_NAME: x}
    )[0]
    assert np.abs(other_logits - single_logits).max() > 1e-2
