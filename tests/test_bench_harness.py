"""The benchmark harness (bench/) at tiny scale: it runs, and its numbers and files are sane.

No timing assertions: the figures themselves are judged by `make bench`, not by tests. What is
asserted: every path completed calls without errors, every path gave the same answer, the
percentiles are ordered, the ratios are computed from the rows, and the PNG is a PNG.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from _report import Row, goals, percentile, ratios, write_json  # noqa: E402
from _servers import toml_text  # noqa: E402
from bench_load import rss_flat  # noqa: E402
from floor import Primitives, figures, measure  # noqa: E402


def _row(path: str, clients: int, rps: float, p50: float, case: str = "mlp-64kb") -> Row:
    return Row.of(
        case=case,
        label=case,
        payload_bytes=65536,
        path=path,
        clients=clients,
        latencies_ms=[p50] * 10,
        errors=0,
        rps=rps,
        checksum=1.0,
    )


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert math.isnan(percentile([], 0.5))


def test_ratios_and_goals_come_from_the_rows() -> None:
    rows = [
        _row("inprocess", 1, 1000.0, 0.5),
        _row("plain", 1, 400.0, 2.0),
        _row("sealed", 1, 380.0, 2.2),
        _row("batched", 1, 200.0, 4.0),
    ]
    (q,) = ratios(rows)
    assert q.sealed_plain == pytest.approx(0.95)
    assert q.batched_plain == pytest.approx(0.5)
    assert q.sealed_inprocess == pytest.approx(0.38)
    assert q.p50_added_ms == pytest.approx(0.2)
    found = {g.text: g.met for g in goals(rows)}
    assert found == {
        "sealed/plain >= 0.9x, mlp-64kb, 1 client(s)": True,
        "p50 added <= 0.3 ms, mlp-64kb, 1 client": True,
    }
    slower = [*rows[:2], _row("sealed", 1, 300.0, 3.0)]
    assert not any(g.met for g in goals(slower))


def test_rss_flat_compares_peaks_not_swings() -> None:
    mib = 2**20
    swinging = [(float(t), (160 if t % 2 else 195) * mib) for t in range(10, 70)]
    flat = rss_flat(swinging)
    assert flat.ok and flat.growth == 0.0 and (flat.low, flat.high) == (160 * mib, 195 * mib)
    leaking = [(float(t), (150 + t) * mib) for t in range(10, 70)]
    assert not rss_flat(leaking).ok  # 150+69 vs 150+20 MiB: +22 %
    assert not rss_flat([]).ok


def _floor_rows(tmp_path: Path) -> list[Row]:
    """Rows of a bench run: plain 2 ms a call at 1 client, 400 req/s and 3 ms of CPU a call at 8
    and 32; in-process 4 ms a call, 1 ms of CPU; sealed and batched at half of plain. Written
    with ``write_json`` and read back as ``bench/floor.py`` reads them."""
    rows: list[Row] = []
    for case in ("mlp-1kb", "mlp-64kb", "mean-1mb", "mlp-compute"):
        payload = {"mlp-64kb": 65536, "mean-1mb": 1 << 20}.get(case, 1024)
        for clients in (1, 8, 32):
            plain = 500.0 if clients == 1 else 400.0
            for path, rps, server_cpu, client_cpu in (
                ("inprocess", 250.0, math.nan, 1.0),
                ("plain", plain, 2.0, 1.0),
                ("sealed", plain / 2, 3.0, 1.5),
                ("batched", plain / 2, 3.0, 1.5),
            ):
                row = _row(path, clients, rps, 1e3 / rps, case)
                rows.append(
                    replace(
                        row,
                        payload_bytes=payload,
                        server_cpu_ms=server_cpu,
                        client_cpu_ms=client_cpu,
                    )
                )
    write_json(tmp_path / "run.json", rows, {"cores": 2})
    return [Row.from_json(r) for r in json.loads((tmp_path / "run.json").read_text())["rows"]]


def test_floor_bounds_follow_from_the_primitives(tmp_path: Path) -> None:
    """bench/floor.py's arithmetic: each figure's best reachable value from the floor."""
    prim = Primitives(fsync_ms=0.2, sign_ms=0.08, verify_ms=0.1, aes_ms_per_mib=1.0)
    aes_64k = (2 * 65536 + 2 * 2048) / 2**20
    assert prim.latency_floor_ms(65536) == pytest.approx(0.3 + aes_64k)
    assert prim.cpu_floor_ms(65536, 8) == pytest.approx(0.1 + 0.01 + aes_64k)
    rows = _floor_rows(tmp_path)
    assert math.isnan(rows[0].server_cpu_ms)  # in-process: null in the JSON, NaN again
    found = {f.text: f for f in figures(rows, prim, cores=2)}
    one = found["sealed/plain, mlp-64kb, 1 client"]
    assert one.best_here == pytest.approx(2.0 / (2.0 + 0.3 + aes_64k))  # plain 2 ms + floor
    assert one.measured == pytest.approx(0.5) and one.ruled_out
    eight = found["sealed/plain, mlp-64kb, 8 clients"]
    assert eight.best_here == pytest.approx(2e3 / (3.0 + prim.cpu_floor_ms(65536, 8)) / 400)
    assert not eight.ruled_out  # 2 cores / ~3.2 ms = ~620 req/s, 1.5x plain's 400
    added = found["p50 added, mlp-64kb, 1 client"]
    assert added.best_here == pytest.approx(0.3 + aes_64k) and added.ruled_out
    assert added.measured == pytest.approx(2.0)  # sealed p50 4 ms against plain 2 ms
    batched = found["sealed+batched/plain, mlp-1kb, 32 clients"]
    # the model's run counted free: plain's 3 ms of CPU less the in-process run's 1 ms
    assert batched.best_here == pytest.approx(2e3 / (2.0 + prim.cpu_floor_ms(1024, 32)) / 400)
    assert not batched.ruled_out  # 2 cores / ~2.1 ms = ~950 req/s: 2.4x plain's 400
    compute = found["sealed/in-process, mlp-compute, 1 client"]
    assert compute.best_here == pytest.approx(4.0 / (2.0 + prim.latency_floor_ms(1024)))
    assert not compute.ruled_out  # in-process 4 ms, plain 2 ms: sealing fits under 0.8x here


def test_floor_measures_positive_costs(tmp_path: Path) -> None:
    prim = measure(tmp_path, fsync_calls=20)
    assert prim.fsync_ms > 0 and prim.sign_ms > 0 and prim.verify_ms > 0
    assert prim.aes_ms_per_mib > 0
    assert list(tmp_path.iterdir()) == []  # its scratch file is gone


def test_config_overlay_is_valid_toml() -> None:
    doc = {
        "server": {"max_message_bytes": 1024, "providers": ["CPUExecutionProvider"]},
        "batching": {"max_batch": 32, "models": {"default/mlp": {"max_delay_ms": 1.5}}},
        "tenants": {"default": {"api_key_sha256": "ab" * 32}},
    }
    assert tomllib.loads(toml_text(doc)) == doc
    assert tomllib.loads((BENCH / "batched.toml").read_text())["batching"]["max_batch"] >= 2


def _run(script: str, *args: str, ok: tuple[int, ...] = (0,)) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode in ok, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_inference_harness_end_to_end(tmp_path: Path) -> None:
    """Two client processes, every path, one small case: real servers in their own processes."""
    _run(
        "bench_inference.py",
        *("--cases", "mlp-1kb", "--clients", "1,2", "--seconds", "0.4", "--warmup", "2"),
        *("--batched-config", str(BENCH / "batched.toml"), "--out", str(tmp_path)),
    )
    doc = json.loads((tmp_path / "inference.json").read_text())
    rows = doc["rows"]
    assert {(r["path"], r["clients"]) for r in rows} == {
        (p, c) for p in ("inprocess", "plain", "sealed", "batched") for c in (1, 2)
    }
    for r in rows:
        assert r["calls"] > 0 and r["errors"] == 0, r
        assert r["rps"] > 0
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"], r
        assert r["client_cpu_ms"] >= 0, r  # CPU clocks tick in 10 ms: a short run may read 0
        assert (r["server_cpu_ms"] is None) == (r["path"] == "inprocess"), r  # no server: null
        assert r["other_cores"] >= 0, r
    assert sum(r["client_cpu_ms"] for r in rows) > 0
    assert sum(r["server_cpu_ms"] for r in rows if r["server_cpu_ms"] is not None) > 0
    ref = rows[0]["checksum"]  # every path, the same answer (batching may reorder float sums)
    assert all(math.isclose(r["checksum"], ref, rel_tol=1e-3, abs_tol=1e-3) for r in rows)
    by = {(r["path"], r["clients"]): r for r in rows}
    for q in doc["ratios"]:
        sealed, plain = by[("sealed", q["clients"])], by[("plain", q["clients"])]
        assert q["sealed_plain"] == pytest.approx(sealed["rps"] / plain["rps"])
    table = (tmp_path / "inference.md").read_text()
    assert "| mlp-1kb | 2 | sealed+batched |" in table
    assert (tmp_path / "inference.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_harness_end_to_end(tmp_path: Path) -> None:
    """A few seconds of the load test: calls complete, no errors, the server's RSS is sampled."""
    _run(
        "bench_load.py",
        *("--seconds", "3", "--clients", "2", "--warmup-seconds", "0", "--case", "mlp-1kb"),
        *("--out", str(tmp_path)),
        ok=(0, 1),  # 1: a verdict failed; RSS over 3 s without warm-up may move, the rest may not
    )
    doc = json.loads((tmp_path / "load.json").read_text())
    assert doc["calls"] > 0 and doc["errors"] == {}
    assert doc["verdicts"]["zero errors"] and doc["verdicts"]["server alive to the end"]
    assert len(doc["rss_samples"]) >= 2
    assert all(s["rss_bytes"] > 10 * 2**20 for s in doc["rss_samples"])
