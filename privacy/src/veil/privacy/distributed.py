"""Multi-process DP training entry point, launched with ``torchrun``.

    torchrun --standalone --nproc-per-node 2 -m veil.privacy.distributed JOB.json OUT_DIR

``JOB.json`` names the dataset file and its format, the model spec and the training config:
``{"dataset": "train.npz", "format": "npz", "label_column": null, "model": {...},
"training": {...}}``. Every rank loads the same dataset; training runs through
``veil.privacy.train`` under a gloo (CPU) or NCCL (GPU) process group with Opacus' DPDDP: each rank
Poisson-samples its shard of rows at the job's sample rate, noise is added on rank 0 only, and
gradients are averaged, so the privacy accounting is exactly that of the single-process job.
Rank 0 writes ``OUT_DIR/model.onnx`` and ``OUT_DIR/record.json`` (canonical JSON).

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
from ._models import ModelSpec
from ._training import TrainingConfig, train

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m veil.privacy.distributed", description=__doc__)
    ap.add_argument("job", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    args = ap.parse_args(argv)
    try:
        job = json.loads(args.job.read_text())
        data = Path(job["dataset"]).read_bytes()
        dataset = load_dataset(data, job.get("format", "npz"), label_column=job.get("label_column"))
        spec = ModelSpec.from_mapping(job["model"])
        config = TrainingConfig.from_mapping(job["training"])
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        print(f"error: job file {args.job} is unusable: {exc!r}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    dist.init_process_group(backend=args.backend)
    if args.backend == "nccl":  # one GPU per rank (torchrun sets LOCAL_RANK)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        result = train(dataset, spec, config)
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
