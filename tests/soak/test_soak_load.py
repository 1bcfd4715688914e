"""Load: 32 client processes for 60 s of sealed inference; no errors, no memory growth.

Each process is its own client (own channel, attestation, keys). Seven in eight requests carry a
4-row batch, one in eight a 1 MiB batch; every 5 s each client also lists its models and fetches
an audit checkpoint, all clients in the same second (a herd, on purpose). The server's resident
memory (its whole process tree) is sampled every half second: its median over the last 10 s may
not exceed its median over 15-25 s (after warm-up) by more than 10 %.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from enclave_support import TENANT_KEYS, mlp_model

from soak.load_worker import LoadSpec
from soak.soak_support import (
    LoadFleet,
    MiB,
    RssWatch,
    VeilServer,
    assert_none,
    make_data_dir,
)

pytestmark = [pytest.mark.soak, pytest.mark.filterwarnings("ignore::veil.sdk.InsecureModeWarning")]

CLIENTS = 32
SECONDS = 60.0
WARMUP = 15.0
WINDOW = 10.0  # RSS is compared as medians over 10 s windows: after warm-up, and at the end
GROWTH = 0.10


def _p50_p99(ms: np.ndarray) -> str:
    if not ms.size:
        return "none completed"
    return f"{np.percentile(ms, 50):.1f} / {np.percentile(ms, 99):.1f}"


def test_load_32_clients_60_seconds(
    tmp_path: Path, tee_template: Path, figures: Callable[[str, object], None]
) -> None:
    data = make_data_dir(tmp_path / "data", tee_template)
    with VeilServer(data, tmp_path / "server.log") as server:
        for tenant in TENANT_KEYS:
            with server.client(tenant) as client:
                client.upload_model(mlp_model(), "m")
        tenants = sorted(TENANT_KEYS)
        specs = [
            LoadSpec(
                address=server.address,
                root_pem=server.root_pem(),
                tenant=tenants[i % len(tenants)],
                api_key=TENANT_KEYS[tenants[i % len(tenants)]],
                model="m",
                seconds=SECONDS,
            )
            for i in range(CLIENTS)
        ]
        with LoadFleet(specs) as fleet:
            fleet.go()
            with RssWatch(server.pid, interval=0.5) as watch:
                results, silent = fleet.results(timeout=SECONDS + 180)
        assert server.alive(), f"the server died under load:\n{server.log_tail()}"
        server.health()

    requests = sum(r.requests for r in results)
    errors = sum(r.error_count for r in results)
    small = np.array([ms for r in results for ms in r.small_ms])
    large = np.array([ms for r in results for ms in r.large_ms])
    warm = watch.median(WARMUP, WARMUP + WINDOW)
    end = watch.median(SECONDS - WINDOW, SECONDS)
    figures("client processes", CLIENTS)
    figures("seconds", SECONDS)
    figures("requests", requests)
    figures("requests/s", requests / SECONDS)
    figures("errors", errors)
    kinds: dict[str, int] = {}
    for r in results:
        for kind, n in r.error_kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
    for kind, n in sorted(kinds.items()):
        figures(f"  errors: {kind}", n)
    figures("4-row p50 / p99 (ms)", _p50_p99(small))
    figures("1 MiB p50 / p99 (ms)", _p50_p99(large))
    figures("list+checkpoint rounds", sum(r.admin_calls for r in results))
    figures("RSS median 15-25 s (MiB)", warm / MiB)
    figures("RSS median 50-60 s (MiB)", end / MiB)
    figures("RSS peak (MiB)", watch.peak / MiB)
    figures("RSS growth after warm-up", f"{(end - warm) / warm:+.1%}")

    problems = []
    if silent:
        problems.append(f"{silent} client processes never reported")
    if errors:
        first = [message for r in results for message in r.errors][:5]
        problems.append(f"{errors} of {requests} calls failed, e.g. {first}")
    if not (small.size and large.size):
        problems.append("no request of some size completed")
    if end > warm * (1 + GROWTH):
        problems.append(
            f"server RSS grew {(end - warm) / warm:.1%} after warm-up "
            f"({warm / MiB:.0f} -> {end / MiB:.0f} MiB)"
        )
    assert_none(problems)
