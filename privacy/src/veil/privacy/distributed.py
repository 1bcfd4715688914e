"""Multi-process DP training entry point, launched with ``torchrun``.

    torchrun --standalone --nproc-per-node 2 -m veil.privacy.distributed JOB.json OUT_DIR

``JOB.json`` names the dataset file and its format, the model spec and the training config:
``{"dataset": "train.npz", "format": "npz", "label_column": null, "model": {...},
"training": {...}}``. Every rank loads the same dataset; training runs through
``veil.privacy.train`` under a gloo (CPU) or NCCL (GPU) process group with Opacus' DPDDP: each rank
Poisson-samples its shard of rows at the job's sample rate, noise is added on rank 0 only, and
gradients are averaged, so the privacy accounting is exactly that of the single-process job.
Rank 0 writes ``OUT_DIR/model.onnx`` and ``OUT_DIR/record.json`` (canonical JSON).

Across nodes (a Kubernetes Job per node, docs/SCALE-OUT.md) the same command runs under
``torchrun --nnodes N --nproc-per-node M --rdzv-backend c10d --rdzv-endpoint HOST:PORT
--rdzv-id JOB``; the accounting is unchanged (it depends on the job, not on the world size).
With ``--ledger URL`` (default ``$VEIL_DATABASE_URL``) and ``"tenant"``/``"job_id"`` in the job
file, rank 0 charges the job's full (epsilon, delta) ONCE in the shared PostgreSQL ledger before
any rank touches the data (every rank waits for the verdict; a refusal exits 3 on every rank),
and settles it when the job ends. ``"budget": {"epsilon": E, "delta": D}`` is the dataset's
budget at its first charge.

This is a command-line edge: it reads files and the torchrun environment; the library does not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from veil.sdk.errors import ConfigError, VeilError

from ._datasets import load_dataset
from ._ledger import BudgetConfig, Charge
from ._models import ModelSpec
from ._training import TrainingConfig, plan_training, train

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m veil.privacy.distributed", description=__doc__)
    ap.add_argument("job", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    ap.add_argument(
        "--ledger",
        default=os.environ.get("VEIL_DATABASE_URL", ""),
        metavar="URL",
        help="PostgreSQL budget ledger to charge once per job (default $VEIL_DATABASE_URL)",
    )
    args = ap.parse_args(argv)
    try:
        job = json.loads(args.job.read_text())
        data = Path(job["dataset"]).read_bytes()
        dataset = load_dataset(data, job.get("format", "npz"), label_column=job.get("label_column"))
        spec = ModelSpec.from_mapping(job["model"])
        config = TrainingConfig.from_mapping(job["training"])
        tenant, job_id = str(job.get("tenant", "")), str(job.get("job_id", ""))
        budget = BudgetConfig(**job.get("budget", {}))
        if args.ledger and not (tenant and job_id):
            raise ConfigError("charging the ledger needs the job's tenant and job_id")
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        print(f"error: job file {args.job} is unusable: {exc!r}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    dist.init_process_group(backend=args.backend)
    if args.backend == "nccl":  # one GPU per rank (torchrun sets LOCAL_RANK)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    charge: Charge | None = None
    try:
        if args.ledger:
            from ._pg_ledger import PostgresBudgetLedger

            ledger = PostgresBudgetLedger(args.ledger, default_budget=budget)
            verdict: list[object] = [None]
            if dist.get_rank() == 0:  # one charge for the whole job, before any rank trains
                try:
                    plan = plan_training(dataset.num_rows, config)
                    charge = ledger.charge(tenant, dataset.sha256, plan, job_id=job_id)
                    verdict = [charge.id]
                except VeilError as exc:
                    verdict = [f"refused: {exc}"]
            dist.broadcast_object_list(verdict, src=0)
            if not isinstance(verdict[0], str) or verdict[0].startswith("refused"):
                print(f"error: rank {dist.get_rank()}: budget {verdict[0]}", file=sys.stderr)
                return 3
        result = train(dataset, spec, config)
        if charge is not None:  # rank 0: the job ran every step it planned
            ledger.settle(charge.id, steps_started=result.record.steps)
        if dist.get_rank() == 0:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "model.onnx").write_bytes(result.onnx)
            (args.out / "record.json").write_bytes(result.record.to_json())
        dist.barrier()
    except VeilError as exc:
        print(f"error: rank {dist.get_rank()}: {exc}", file=sys.stderr)
        return 1
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
