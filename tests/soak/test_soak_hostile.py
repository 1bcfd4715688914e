"""The hostile-model corpus (tests/hostile_models.py) against one running enclave.

Every entry (external data in every position, Loop bombs, allocation bombs, deep nesting) is
uploaded by tenant ``default`` and, where it must be stopped at inference, run. Each must be
stopped where and how the corpus says (status, reason, start of the sealed detail), the planted
secret file's bytes must never come back, and after each entry the server must still be
healthy: health check, a normal inference for the attacking tenant and for another one. The
server's memory (process tree) is watched every 50 ms and must stay under a bound; crossing it
kills the server (to spare the machine) and fails the check. At the end no stopped inference may
still burn CPU, and SIGTERM must exit 0.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from enclave_support import TENANT_KEYS, mlp_model
from hostile_models import INFER, PLANTED_SECRET, Hostile, corpus

from soak.soak_support import (
    REPO,
    MiB,
    RssWatch,
    VeilServer,
    assert_none,
    cpu_seconds,
    make_data_dir,
    tree_rss,
)
from veil.sdk import RemoteError

pytestmark = [pytest.mark.soak, pytest.mark.filterwarnings("ignore::veil.sdk.InsecureModeWarning")]

# The corpus's own test uses the same inference limits. The timeout must stay well under the
# time a Loop at the trip-count bound takes (about 3 s for 10^6 trips on the 2-core machine),
# since the corpus expects that Loop to be stopped by the clock.
LIMITS = {
    "inference_timeout_seconds": 1.0,
    "inference_memory_bytes": 256 * MiB,
    "max_loop_trip_count": 1_000_000,
    "max_graph_depth": 8,
    "max_graph_nodes": 100_000,
}
X = {"x": np.zeros((2, 4), np.float32)}


def _corpus(planted: Path) -> list[Hostile]:
    return corpus(
        planted,
        REPO,  # the server's working directory: relative paths resolve from there
        max_trip_count=int(LIMITS["max_loop_trip_count"]),
        timeout_seconds=float(LIMITS["inference_timeout_seconds"]),
        memory_bytes=int(LIMITS["inference_memory_bytes"]),
        max_depth=int(LIMITS["max_graph_depth"]),
        max_nodes=int(LIMITS["max_graph_nodes"]),
    )


def _run_case(server: VeilServer, case: Hostile, timeout: float) -> tuple[str, RemoteError | None]:
    """(stage reached, the refusal); stage is "upload", "infer" or "accepted"."""
    with server.client(timeout=timeout) as client:
        try:
            info = client.upload_model(case.model, re.sub(r"[^A-Za-z0-9._-]", "-", case.name))
        except RemoteError as exc:
            return "upload", exc
        if not case.inputs:
            return "accepted", None
        try:
            client.infer(info.ref, case.inputs)
        except RemoteError as exc:
            return "infer", exc
    return "accepted", None


def _serves(server: VeilServer) -> str:
    """Empty when the server is healthy and serves both tenants; else what failed."""
    try:
        server.health(timeout=10.0)
        for tenant in TENANT_KEYS:
            with server.client(tenant, timeout=20.0) as client:
                client.infer("ok", X)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    return ""


def test_hostile_model_corpus(
    tmp_path: Path, tee_template: Path, figures: Callable[[str, object], None]
) -> None:
    planted = tmp_path / "planted.bin"
    planted.write_bytes(PLANTED_SECRET)
    corpus = _corpus(planted)
    timeout = float(LIMITS["inference_timeout_seconds"])
    data = make_data_dir(tmp_path / "data", tee_template, limits=LIMITS)
    problems: list[str] = []
    slowest = (0.0, "")
    restarts = 0
    with VeilServer(data, tmp_path / "server.log") as server:
        for tenant in TENANT_KEYS:
            with server.client(tenant) as client:
                client.upload_model(mlp_model(), "ok")
        baseline = server.rss()
        bound = baseline + 2 * int(LIMITS["inference_memory_bytes"]) + 256 * MiB
        peak = baseline
        for case in corpus:
            name = case.name
            began = time.monotonic()
            with RssWatch(server.pid, interval=0.05, kill_above=bound) as watch:
                try:
                    stage, refusal = _run_case(server, case, timeout + 20.0)
                except Exception as exc:
                    stage, refusal = f"error {type(exc).__name__}: {exc}"[:200], None
            took = time.monotonic() - began
            slowest = max(slowest, (took, name))
            peak = max(peak, watch.peak)
            want_stage = "infer" if case.refused_at == INFER else "upload"
            got = (stage, refusal.code, refusal.reason) if refusal else (stage, "", "")
            want = (want_stage, case.code, case.reason)
            if watch.killed_at is not None:
                problems.append(f"{name}: server RSS {watch.killed_at / MiB:.0f} MiB > bound")
            elif got != want:
                problems.append(f"{name}: got {got}, expected {want}")
            elif refusal is not None and not refusal.detail.startswith(case.detail):
                problems.append(f"{name}: detail {refusal.detail[:120]!r}")
            if refusal is not None and PLANTED_SECRET.decode() in str(refusal):
                problems.append(f"{name}: the planted secret came back in the refusal")
            broken = _serves(server) if server.alive() else "the server died"
            if broken:
                problems.append(f"{name}: not serving afterwards: {broken}")
                server.close()
                server.start()
                restarts += 1
        time.sleep(1.0)  # let any stopped inference wind down before measuring idle CPU
        cpu_before = cpu_seconds(server.pid)
        time.sleep(3.0)
        idle_cpu = (cpu_seconds(server.pid) - cpu_before) / 3.0
        final_rss = tree_rss(server.pid)
        began = time.monotonic()
        code = server.terminate(timeout=20.0)
        stop_seconds = time.monotonic() - began
    leaked = PLANTED_SECRET in (tmp_path / "server.log").read_bytes()

    figures("entries", len(corpus))
    figures("stopped as expected", len(corpus) - len({p.split(":")[0] for p in problems}))
    figures("server restarts needed", restarts)
    figures("slowest entry (s)", f"{slowest[0]:.1f} ({slowest[1]})")
    figures("RSS baseline (MiB)", baseline / MiB)
    figures("RSS peak (MiB)", peak / MiB)
    figures("RSS bound (MiB)", bound / MiB)
    figures("RSS after corpus (MiB)", final_rss / MiB)
    figures("idle CPU after corpus (cores)", idle_cpu)
    figures("SIGTERM exit code / seconds", f"{code} / {stop_seconds:.1f}")

    if idle_cpu > 0.5:
        problems.append(f"the server burns {idle_cpu:.2f} cores with nothing to do")
    if leaked:
        problems.append("the planted secret appears in the server's log")
    if code != 0:
        problems.append(f"SIGTERM after the corpus: exit code {code}")
    assert_none(problems)
