"""One load-generating client process for the reliability suite (started with ``spawn``).

Each process has its own :class:`veil.sdk.Client` (its own channel, attestation and keys), attests,
waits at a barrier so that all start together, then runs sealed inferences for a fixed time:
small batches, every ``large_every``-th request a 1 MiB batch, and every ``admin_every`` seconds
a model listing and an audit checkpoint. It reports counts, errors and latencies on a queue.
With ``receipts_path`` it appends every receipt it is given to that file as it arrives, so the
receipts survive the server being killed under it.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import numpy as np

from veil.sdk import AttestationPolicy, Client, InsecureModeWarning
from veil.sdk.audit import Receipt

BARRIER_SECONDS = 300.0  # 32 processes importing grpc and numpy on two cores take a while
SMALL_X = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
LARGE_X = np.random.default_rng(2).normal(size=(65536, 4)).astype(np.float32)  # 1 MiB


def write_receipts(path: Path, receipts: Iterable[Receipt]) -> None:
    """Append receipts to ``path``, one JSON string (the signed body) per line."""
    with path.open("a") as out:
        for receipt in receipts:
            out.write(json.dumps(receipt.body()) + "\n")


@dataclass(frozen=True)
class LoadSpec:
    address: str
    root_pem: bytes
    tenant: str
    api_key: str
    model: str
    seconds: float
    large_every: int = 8
    admin_every: float = 5.0
    receipts_path: str | None = None
    stop_on_error: bool = False


@dataclass
class LoadResult:
    tenant: str
    requests: int = 0
    admin_calls: int = 0
    receipts: int = 0
    error_count: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, for the report
    error_kinds: dict[str, int] = field(default_factory=dict)  # "call STATUS/reason": count
    small_ms: list[float] = field(default_factory=list)
    large_ms: list[float] = field(default_factory=list)

    def fail(self, call: str, exc: Exception) -> None:
        self.error_count += 1
        code = getattr(exc, "code", type(exc).__name__)
        kind = f"{call} {code}/{getattr(exc, 'reason', '')}".rstrip("/")
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
        if len(self.errors) < 5:
            self.errors.append(f"{call}: {type(exc).__name__}: {exc}"[:300])


def run(spec: LoadSpec, barrier: Barrier, results: Queue[Any]) -> None:
    """Process entry point: attest, meet the others, load for ``spec.seconds``, report."""
    warnings.filterwarnings("ignore", category=InsecureModeWarning)
    result = LoadResult(spec.tenant)
    policy = AttestationPolicy.simulated_for_tests(spec.root_pem)
    with Client(
        spec.address, tenant=spec.tenant, api_key=spec.api_key, policy=policy, timeout=60.0
    ) as client:
        try:
            client.attest()
        except Exception as exc:
            result.fail("attest", exc)
        barrier.wait(BARRIER_SECONDS)
        end = time.monotonic() + spec.seconds
        next_admin = time.monotonic() + spec.admin_every
        written = 0
        while time.monotonic() < end and not (spec.stop_on_error and result.error_count):
            large = result.requests % spec.large_every == spec.large_every - 1
            batch = LARGE_X if large else SMALL_X
            result.requests += 1
            began = time.perf_counter()
            call = "infer"
            try:
                out = client.infer(spec.model, {"x": batch})
                if out["probs"].shape != (batch.shape[0], 3):
                    raise AssertionError(f"probs shape {out['probs'].shape}")
                elapsed = (time.perf_counter() - began) * 1000
                (result.large_ms if large else result.small_ms).append(elapsed)
                if time.monotonic() >= next_admin:
                    call = "list_models"
                    client.list_models()
                    call = "audit_checkpoint"
                    client.audit_checkpoint()
                    result.admin_calls += 1
                    next_admin += spec.admin_every
            except Exception as exc:
                result.fail(call, exc)
            if spec.receipts_path is not None:
                fresh = client.receipts[written:]
                write_receipts(Path(spec.receipts_path), fresh)
                written += len(fresh)
        result.receipts = len(client.receipts)
    results.put(result)
