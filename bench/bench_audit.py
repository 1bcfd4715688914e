"""Audit log benchmark: group commit vs one fsync per record, export verification, proof size.

Prints, from one run:
  * durable appends/s with group commit (N concurrent appender threads), p50/p99 ack latency,
    appends per CPU-second; the same for one fsync per record; and the ratio;
  * export verification rate (records/s and per CPU-second) for a full export;
  * inclusion proof size (hashes, bytes) and generation time for a 10^6-record tree.

    .venv/bin/python bench/bench_audit.py [--threads 64] [--per-thread 400] [--verify-records N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from veil.enclave.audit import AuditLog, Signer
from veil.sdk.audit import (
    AuditRecord,
    EventType,
    MerkleTree,
    Outcome,
    hash_leaf,
    verify_export,
    verify_inclusion,
)

T0 = datetime(2026, 11, 28, tzinfo=UTC)


def _record(i: int) -> AuditRecord:
    return AuditRecord.create(
        now=T0 + timedelta(microseconds=i),
        event=EventType.INFERENCE,
        outcome=Outcome.SUCCESS,
        tenant="bench",
        origin="ipv4:10.1.2.3:40000",
        key_id="key-0001",
        resource="model:resnet50",
        details={
            "request_digest": "hmac-sha256:" + f"{i:064x}",
            "response_digest": "hmac-sha256:" + f"{i + 1:064x}",
            "latency_ms": i % 100,
        },
    )


def _appends(root: Path, *, group_commit: bool, threads: int, per_thread: int) -> dict[str, float]:
    log = AuditLog(
        root,
        Signer.generate("veil.bench"),
        clock=lambda: T0,
        checkpoint_interval=1.0,
        group_commit=group_commit,
    )
    records = [[_record(t * per_thread + i) for i in range(per_thread)] for t in range(threads)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start_gate = threading.Barrier(threads + 1)

    def worker(t: int) -> None:
        mine = latencies[t]
        start_gate.wait()
        for record in records[t]:
            t0 = time.perf_counter()
            log.append(record)
            mine.append(time.perf_counter() - t0)

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    start_gate.wait()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for w in workers:
        w.join()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    log.close()
    lat = sorted(x for ls in latencies for x in ls)
    n = len(lat)
    return {
        "n": n,
        "rate": n / wall,
        "per_cpu_s": n / cpu,
        "p50_ms": lat[n // 2] * 1e3,
        "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1e3,
        "mean_ms": statistics.fmean(lat) * 1e3,
    }


def _verification(root: Path, records: int) -> dict[str, float]:
    tenant_dir = root / "bench"
    tenant_dir.mkdir(parents=True)
    with (tenant_dir / "entries.jsonl").open("wb") as f:  # an existing log on disk
        for i in range(records):
            f.write(_record(i).to_line() + b"\n")
    t0 = time.perf_counter()
    log = AuditLog(root, Signer.generate("veil.bench"), clock=lambda: T0, checkpoint_interval=None)
    assert log.size("bench") == records
    open_s = time.perf_counter() - t0
    out = root / "export"
    t0 = time.perf_counter()
    log.export("bench", out)
    export_s = time.perf_counter() - t0
    vkey = log.vkey
    log.close()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    result = verify_export(out, expect_vkey=vkey)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert result.entry_count == records
    return {
        "records": records,
        "rate": records / wall,
        "per_cpu_s": records / cpu,
        "open_s": open_s,
        "export_s": export_s,
    }


def _proof_size(leaves: int) -> dict[str, float]:
    t0 = time.perf_counter()
    tree = MerkleTree()
    for i in range(leaves):
        tree.append_hash(hash_leaf(i.to_bytes(8, "big")))
    build_s = time.perf_counter() - t0
    root = tree.root()
    sizes = []
    t0 = time.perf_counter()
    probes = [0, 1, leaves // 3, leaves // 2, leaves - 2, leaves - 1]
    for index in probes:
        proof = tree.inclusion_proof(index)
        verify_inclusion(tree.leaf_hash(index), index, leaves, proof, root)
        sizes.append(len(proof))
    per_proof_ms = (time.perf_counter() - t0) / len(probes) * 1e3
    return {
        "leaves": leaves,
        "max_hashes": max(sizes),
        "min_hashes": min(sizes),
        "bytes": max(sizes) * 32,
        "build_s": build_s,
        "proof_ms": per_proof_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--per-thread", type=int, default=400)
    parser.add_argument("--baseline-per-thread", type=int, default=40)
    parser.add_argument("--verify-records", type=int, default=200_000)
    parser.add_argument("--proof-leaves", type=int, default=1_000_000)
    parser.add_argument("--dir", default=None, help="where to put the logs (default: a temp dir)")
    args = parser.parse_args()
    print(f"cores visible: {os.cpu_count()}; threads: {args.threads}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        group = _appends(
            base / "group", group_commit=True, threads=args.threads, per_thread=args.per_thread
        )
        single = _appends(
            base / "single",
            group_commit=False,
            threads=args.threads,
            per_thread=args.baseline_per_thread,
        )
        for name, r in (("group commit", group), ("one fsync/record", single)):
            print(
                f"{name:17s}: {r['n']:7.0f} appends  {r['rate']:9.0f}/s  "
                f"{r['per_cpu_s']:9.0f}/CPU-s  p50 {r['p50_ms']:7.2f} ms  "
                f"p99 {r['p99_ms']:7.2f} ms"
            )
        print(f"group commit / one fsync per record: {group['rate'] / single['rate']:.1f}x")
        v = _verification(base / "verify", args.verify_records)
        print(
            f"export verification: {v['records']:.0f} records  {v['rate']:9.0f} records/s  "
            f"{v['per_cpu_s']:9.0f}/CPU-s  (reopen+rebuild {v['open_s']:.2f} s, "
            f"export {v['export_s']:.2f} s)"
        )
    p = _proof_size(args.proof_leaves)
    print(
        f"inclusion proof, {p['leaves']:.0f}-leaf tree: {p['min_hashes']:.0f}-{p['max_hashes']:.0f}"
        f" hashes, <= {p['bytes']:.0f} bytes; {p['proof_ms']:.3f} ms per proof+verify "
        f"(tree built in {p['build_s']:.2f} s)"
    )


if __name__ == "__main__":
    main()
