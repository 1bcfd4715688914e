"""The least a sealed call must add on this machine, and which of issue 12's figures that rules out.

    .venv/bin/python bench/floor.py [--results bench/results/inference.json] [--data-dir DIR]

Whatever the implementation, a sealed call keeps the protocol's promises, and each costs this
machine something a plain gRPC call does not pay:

- **durable before answered**: the call's audit line is written and ``fdatasync``-ed before the
  answer leaves (a lone client shares that sync with nobody);
- **a receipt a third party can check**: one Ed25519 signature per group commit, which the client
  verifies on arrival;
- **sealed both ways**: AES-256-GCM over the request (the client seals it, the enclave opens it)
  and over the answer (the enclave seals it, the client opens it).

This script measures those primitives here (tight loops, warm caches: the cheapest they get), then
reads the plain gRPC server's and in-process ONNX Runtime's figures from the latest
``bench_inference.py`` run (``--results``) and prints, for each of the issue's figures, the best
that *any* sealed server could reach on this machine:

- one client: a call is sequential, so a sealed call takes at least what the plain call took plus
  the fsync, the client's verify and the four AES passes (the signature may overlap the fsync, so
  it is left out): ``ratio <= plain / (plain + floor)``;
- many clients, where the clients share the server's cores: a sealed call costs at least the CPU
  of a plain one (client and server, as measured) plus the verify, the AES passes and its share
  of one signature; throughput is at most ``cores / that``. For sealed+batched the model's run
  is counted as free (the plain server's CPU less the cheapest in-process run of the model).

Both assume that a sealed server's transport and model run cost no less than the plain server's:
they are the same gRPC and the same ONNX Runtime. A figure is ruled out only where its bound misses
the target; otherwise it says "not ruled out".

``--data-dir`` must be on the disk the enclave's audit log would use (default: a temporary
directory under the system's, as ``bench_inference.py`` uses).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _report import Row, ratios  # noqa: E402

_LINE = b'{"event":"inference",' + b"x" * 560 + b"}\n"  # an audit line's size (~600 B)
_NOTE = b"veil-audit-batch\n" + b"y" * 600  # a batch note's size (~620 B)
_RESPONSE_BYTES = 2048  # an answer of these models is a few hundred bytes; 2 KiB is generous

__all__ = ["Figure", "Primitives", "figures", "measure", "main"]


@dataclass(frozen=True)
class Primitives:
    """Per-call costs no sealed implementation avoids here, in milliseconds (p50)."""

    fsync_ms: float  # append one audit line + fdatasync, on the data dir's disk
    sign_ms: float  # Ed25519 sign of a batch note
    verify_ms: float  # Ed25519 verify of it (the client, every call that has a new note)
    aes_ms_per_mib: float  # AES-256-GCM, one pass

    def latency_floor_ms(self, payload_bytes: int) -> float:
        """What a lone sealed call must add to a plain one's latency (the sign may overlap)."""
        return self.fsync_ms + self.verify_ms + self._aes_ms(payload_bytes)

    def cpu_floor_ms(self, payload_bytes: int, clients: int) -> float:
        """What a sealed call must add to a plain one's CPU (one signature per batch of calls)."""
        return self.verify_ms + self.sign_ms / max(1, clients) + self._aes_ms(payload_bytes)

    def _aes_ms(self, payload_bytes: int) -> float:
        mib = (2 * payload_bytes + 2 * _RESPONSE_BYTES) / (1 << 20)
        return mib * self.aes_ms_per_mib


@dataclass(frozen=True)
class Figure:
    """One of the issue's figures, what the latest run measured and the best reachable here."""

    text: str
    target: float
    measured: float
    best_here: float
    higher_is_better: bool = True

    @property
    def ruled_out(self) -> bool:
        if self.higher_is_better:
            return self.best_here < self.target
        return self.best_here > self.target

    def line(self) -> str:
        unit = "x" if self.higher_is_better else " ms"
        cmp = ">=" if self.higher_is_better else "<="
        verdict = "RULED OUT here" if self.ruled_out else "not ruled out"
        bound = "at most" if self.higher_is_better else "at least"
        return (
            f"{self.text}: target {cmp} {self.target:g}{unit}; measured {self.measured:.2f}{unit};"
            f" best any sealed server could reach here: {bound} {self.best_here:.2f}{unit}"
            f" -> {verdict}"
        )


def _p50_ms(fn: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """Median over ``rounds`` of the mean time per call of ``calls`` calls, in ms."""
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls * 1e3)
    return statistics.median(times)


def _fsync_ms(directory: Path, calls: int) -> float:
    with tempfile.TemporaryDirectory(dir=directory, prefix="veil-floor-") as tmp:
        fd = os.open(Path(tmp) / "entries.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        sync = getattr(os, "fdatasync", os.fsync)
        try:
            samples = []
            for _ in range(calls):
                t0 = time.perf_counter()
                os.write(fd, _LINE)
                sync(fd)
                samples.append((time.perf_counter() - t0) * 1e3)
        finally:
            os.close(fd)
    return statistics.median(samples)


def measure(data_dir: Path, *, fsync_calls: int = 400) -> Primitives:
    """Time the primitives on this machine (``data_dir``: where the audit log would live)."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    signature = key.sign(_NOTE)
    aead = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = os.urandom(12)
    mib = os.urandom(1 << 20)
    return Primitives(
        fsync_ms=_fsync_ms(data_dir, fsync_calls),
        sign_ms=_p50_ms(lambda: key.sign(_NOTE), 500),
        verify_ms=_p50_ms(lambda: public.verify(signature, _NOTE), 500),
        aes_ms_per_mib=_p50_ms(lambda: aead.encrypt(nonce, mib, None), 20),
    )


def figures(rows: Sequence[Row], prim: Primitives, cores: int) -> list[Figure]:
    """Issue 12's figures: the run's value (``ratios``) and the best reachable with ``prim``."""
    by = {(r.case, r.path, r.clients): r for r in rows}
    measured = {(q.case, q.clients): q for q in ratios(rows)}

    def row(case: str, path: str, clients: int) -> Row:
        if (case, path, clients) not in by:
            raise KeyError(f"the results have no {path} row for {case} at {clients} client(s)")
        return by[(case, path, clients)]

    def got(case: str, clients: int, field: str) -> float:
        value = getattr(measured[(case, clients)], field)
        if value is None:
            raise ValueError(f"the results have no {field} for {case} at {clients} client(s)")
        return float(value)

    def one_client(case: str, base: str) -> float:
        """Best sealed/base: base's ms per call over plain's plus the latency floor."""
        plain = row(case, "plain", 1)
        floor = prim.latency_floor_ms(plain.payload_bytes)
        return (1e3 / row(case, base, 1).rps) / (1e3 / plain.rps + floor)

    def many_clients(case: str, clients: int, *, batched: bool) -> float:
        """Best sealed/plain: cores over the least CPU a call can take, against plain's req/s.

        The least CPU: a plain call's (its server's and client's, as measured) plus the CPU
        floor. With batching, the model's run is counted as free: the plain server's CPU less
        the cheapest ONNX Runtime run of the case in process.
        """
        plain = row(case, "plain", clients)
        cpu = plain.server_cpu_ms + plain.client_cpu_ms
        if batched:
            cpu -= min(r.client_cpu_ms for r in rows if r.case == case and r.path == "inprocess")
        floor = prim.cpu_floor_ms(plain.payload_bytes, clients)
        return cores * 1e3 / (cpu + floor) / plain.rps

    out: list[Figure] = []
    for case in ("mlp-64kb", "mean-1mb"):
        out.append(
            Figure(
                f"sealed/plain, {case}, 1 client",
                0.9,
                got(case, 1, "sealed_plain"),
                one_client(case, "plain"),
            )
        )
        out.append(
            Figure(
                f"sealed/plain, {case}, 8 clients",
                0.9,
                got(case, 8, "sealed_plain"),
                many_clients(case, 8, batched=False),
            )
        )
    out.append(
        Figure(
            "p50 added, mlp-64kb, 1 client",
            0.3,
            got("mlp-64kb", 1, "p50_added_ms"),
            prim.latency_floor_ms(row("mlp-64kb", "plain", 1).payload_bytes),
            higher_is_better=False,
        )
    )
    for case in ("mlp-1kb", "mlp-64kb"):
        out.append(
            Figure(
                f"sealed+batched/plain, {case}, 32 clients",
                2.0,
                got(case, 32, "batched_plain"),
                many_clients(case, 32, batched=True),
            )
        )
    out.append(
        Figure(
            "sealed/in-process, mlp-compute, 1 client",
            0.8,
            got("mlp-compute", 1, "sealed_inprocess"),
            one_client("mlp-compute", "inprocess"),
        )
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=BENCH / "results" / "inference.json")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    prim = measure(args.data_dir)
    cores = int(results["meta"]["cores"])
    print(f"Primitives on this machine ({cores} cores; audit line synced on {args.data_dir}):")
    print(f"  append + fdatasync of one audit line  {prim.fsync_ms:7.3f} ms p50")
    print(f"  Ed25519 sign / verify                 {prim.sign_ms:7.3f} / {prim.verify_ms:.3f} ms")
    print(f"  AES-256-GCM                           {prim.aes_ms_per_mib:7.3f} ms per MiB")
    meta = results["meta"]
    print(f"Plain and in-process figures from {args.results} (commit {meta.get('commit')}):")
    rows = [Row.from_json(r) for r in results["rows"]]
    for figure in figures(rows, prim, cores):
        print("  " + figure.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
