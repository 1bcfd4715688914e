"""DP training across two "nodes": two torchrun launches joined by c10d rendezvous on loopback.

Each launch is what one Kubernetes Job pod runs (``--nnodes 2 --nproc-per-node 1``); together
they are one DPDDP job of world size 2. Its accounting equals the single-process job's, and its
budget is charged once, by rank 0, in the shared PostgreSQL ledger.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from postgres_support import PostgresServer, postgres_server
from sklearn.datasets import load_digits

from veil.privacy import (
    BudgetConfig,
    ModelSpec,
    PostgresBudgetLedger,
    TrainingConfig,
    TrainingRecord,
    load_dataset,
    train,
)
from veil.sdk.errors import InsecureModeWarning

__all__ = ["postgres_server"]

REPO = Path(__file__).resolve().parents[1]
MLP = {"kind": "mlp", "input_shape": [64], "num_classes": 10, "hidden": [16]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node(job: Path, out: Path, port: int, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{port}",
            "--rdzv-id",
            "veil-job-1",
            "--max-restarts",
            "0",
            "-m",
            "veil.privacy.distributed",
            str(job),
            str(out),
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "VEIL_DATABASE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.timeout(240)
def test_two_node_dpddp_charges_the_shared_ledger_once(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    url = postgres_server.fresh_database()
    digits = load_digits()
    buf = io.BytesIO()
    np.savez(buf, x=(digits.data[:240] / 16.0).astype(np.float32), y=digits.target[:240])
    data = buf.getvalue()
    (tmp_path / "train.npz").write_bytes(data)
    training = {
        "epochs": 2,
        "batch_size": 60,
        "learning_rate": 0.5,
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "noise": "fast",
        "seed": 3,
    }
    job = {
        "dataset": str(tmp_path / "train.npz"),
        "format": "npz",
        "model": MLP,
        "training": training,
        "tenant": "acme",
        "job_id": "job-1",
        "budget": {"epsilon": 20.0, "delta": 1e-5},
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    port = _free_port()
    nodes = [_node(tmp_path / "job.json", tmp_path / f"out{i}", port, url) for i in range(2)]
    outputs = [node.communicate(timeout=220)[0] for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    written = [p for p in (tmp_path / "out0", tmp_path / "out1") if (p / "record.json").exists()]
    assert len(written) == 1  # rank 0 writes, on whichever node it landed
    record = TrainingRecord.from_json((written[0] / "record.json").read_bytes())

    dataset = load_dataset(data, "npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureModeWarning)
        single = train(dataset, ModelSpec.from_mapping(MLP), TrainingConfig.from_mapping(training))
    assert record.world_size == 2 and single.record.world_size == 1
    for field in ("noise_multiplier", "sample_rate", "steps", "delta", "epsilon", "accountant"):
        assert getattr(record, field) == getattr(single.record, field), field

    ledger = PostgresBudgetLedger(url, default_budget=BudgetConfig(20.0, 1e-5))
    charges = ledger.charges("acme", dataset.sha256)
    assert [(c.job_id, c.settled) for c in charges] == [("job-1", True)]  # once, not per rank
    assert charges[0].epsilon == pytest.approx(record.epsilon)
    assert ledger.status("acme", dataset.sha256).spent_epsilon == pytest.approx(record.epsilon)
