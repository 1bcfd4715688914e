"""The benchmark's results: rows, ratios, the issue's goals, a markdown table, a PNG, a JSON.

Pure functions over ``Row`` values (no timing here), so the table, the ratios and the verdicts
are computed once and the same everywhere they are shown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "PATHS",
    "Goal",
    "Ratio",
    "Row",
    "goals",
    "markdown",
    "percentile",
    "ratios",
    "write_json",
    "write_plot",
]

# Every path the benchmark knows, in the order tables and plots show them.
PATHS = {
    "inprocess": "in-process ORT",
    "plain": "plain gRPC",
    "sealed": "sealed",
    "batched": "sealed+batched",
}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by the nearest-rank method; NaN when there is nothing."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class Row:
    """One (case, path, client processes) run."""

    case: str
    label: str
    payload_bytes: int
    path: str
    clients: int
    calls: int
    errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    checksum: float
    server_cpu_ms: float  # CPU milliseconds per completed call: the server's (NaN: no server)
    client_cpu_ms: float  # and the client processes' (in-process: ORT itself)
    other_cores: float  # cores busy with processes outside the benchmark during the run

    @classmethod
    def of(
        cls,
        *,
        case: str,
        label: str,
        payload_bytes: int,
        path: str,
        clients: int,
        latencies_ms: Iterable[float],
        errors: int,
        rps: float,
        checksum: float,
        server_cpu_s: float | None = None,
        client_cpu_s: float | None = None,
        other_cores: float = math.nan,
    ) -> Row:
        values = sorted(latencies_ms)

        def per_call(seconds: float | None) -> float:
            return 1000 * seconds / len(values) if seconds is not None and values else math.nan

        return cls(
            case=case,
            label=label,
            payload_bytes=payload_bytes,
            path=path,
            clients=clients,
            calls=len(values),
            errors=errors,
            rps=rps,
            p50_ms=percentile(values, 0.50),
            p90_ms=percentile(values, 0.90),
            p99_ms=percentile(values, 0.99),
            mean_ms=sum(values) / len(values) if values else math.nan,
            checksum=checksum,
            server_cpu_ms=per_call(server_cpu_s),
            client_cpu_ms=per_call(client_cpu_s),
            other_cores=other_cores,
        )

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Row:
        """A row as ``write_json`` wrote it (null back to NaN)."""
        return cls(
            **{f.name: math.nan if doc[f.name] is None else doc[f.name] for f in fields(cls)}
        )


@dataclass(frozen=True)
class Ratio:
    """How the sealed paths compare with the others, for one case and client count."""

    case: str
    clients: int
    sealed_plain: float | None  # throughput ratios
    batched_plain: float | None
    sealed_inprocess: float | None
    p50_added_ms: float | None  # sealed p50 minus plain p50


@dataclass(frozen=True)
class Goal:
    """One of the issue's figures: what was asked, what was measured, whether it was met."""

    text: str
    measured: str
    met: bool


def _index(rows: Iterable[Row]) -> dict[tuple[str, str, int], Row]:
    return {(r.case, r.path, r.clients): r for r in rows}


def _div(a: Row | None, b: Row | None) -> float | None:
    if a is None or b is None or not b.rps:
        return None
    return a.rps / b.rps


def ratios(rows: Sequence[Row]) -> list[Ratio]:
    by = _index(rows)
    keys = sorted({(r.case, r.clients) for r in rows}, key=lambda k: (_order(rows, k[0]), k[1]))
    out = []
    for case, clients in keys:

        def get(path: str, case: str = case, clients: int = clients) -> Row | None:
            return by.get((case, path, clients))

        sealed, plain = get("sealed"), get("plain")
        out.append(
            Ratio(
                case=case,
                clients=clients,
                sealed_plain=_div(sealed, plain),
                batched_plain=_div(get("batched"), plain),
                sealed_inprocess=_div(sealed, get("inprocess")),
                p50_added_ms=(sealed.p50_ms - plain.p50_ms) if sealed and plain else None,
            )
        )
    return out


def _order(rows: Sequence[Row], case: str) -> int:
    return next(i for i, r in enumerate(rows) if r.case == case)


def goals(rows: Sequence[Row]) -> list[Goal]:
    """The issue's figures, judged on whatever of them this run measured."""
    by = _index(rows)
    out = []
    for case in ("mlp-64kb", "mean-1mb"):
        for clients in (1, 8):
            r = _div(by.get((case, "sealed", clients)), by.get((case, "plain", clients)))
            if r is not None:
                out.append(
                    Goal(
                        f"sealed/plain >= 0.9x, {case}, {clients} client(s)", f"{r:.2f}x", r >= 0.9
                    )
                )
    sealed, plain = by.get(("mlp-64kb", "sealed", 1)), by.get(("mlp-64kb", "plain", 1))
    if sealed and plain:
        added = sealed.p50_ms - plain.p50_ms
        out.append(
            Goal("p50 added <= 0.3 ms, mlp-64kb, 1 client", f"{added:+.2f} ms", added <= 0.3)
        )
    for case in ("mlp-1kb", "mlp-64kb"):
        clients = max((r.clients for r in rows if r.case == case), default=0)
        if clients >= 32:
            r = _div(by.get((case, "batched", clients)), by.get((case, "plain", clients)))
            if r is not None:
                out.append(
                    Goal(
                        f"sealed+batched >= 2x plain, {case}, {clients} clients",
                        f"{r:.2f}x",
                        r >= 2.0,
                    )
                )
    for clients in (1, 8):
        r = _div(
            by.get(("mlp-compute", "sealed", clients)),
            by.get(("mlp-compute", "inprocess", clients)),
        )
        if r is not None:
            out.append(
                Goal(
                    f"sealed >= 0.8x in-process ORT, mlp-compute, {clients} client(s)",
                    f"{r:.2f}x",
                    r >= 0.8,
                )
            )
    return out


def _x(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def markdown(rows: Sequence[Row], header: Sequence[str] = ()) -> str:
    """The ratios, the goals and every run, as markdown."""
    labels = {r.case: r.label for r in rows}
    lines = [*header]
    lines += [
        "",
        "| case | clients | sealed/plain | sealed+batched/plain | sealed/in-process | p50 added |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for q in ratios(rows):
        added = "-" if q.p50_added_ms is None else f"{q.p50_added_ms:+.2f} ms"
        lines.append(
            f"| {q.case} | {q.clients} | {_x(q.sealed_plain)} | {_x(q.batched_plain)} | "
            f"{_x(q.sealed_inprocess)} | {added} |"
        )
    found = goals(rows)
    if found:
        lines += ["", "Goals (issue 12):", ""]
        lines += [f"- {'met' if g.met else 'NOT met'}: {g.text}: {g.measured}" for g in found]
    lines += [
        "",
        "CPU ms/call: CPU time per completed call over the timed window, of the server's "
        "process tree and of all client processes together. Other load: cores kept busy by "
        "processes other than the server under test and its clients during the run (other helpers, "
        "the idle servers' background work; a row with a high figure was disturbed).",
        "",
        "| case | clients | path | req/s | p50 ms | p99 ms | server CPU ms/call "
        "| client CPU ms/call | other load (cores) | calls | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.clients} | {PATHS[r.path]} | {r.rps:.1f} | {_ms(r.p50_ms)} | "
            f"{_ms(r.p99_ms)} | {_ms(r.server_cpu_ms)} | {_ms(r.client_cpu_ms)} | "
            f"{_ms(r.other_cores)} | {r.calls} | {r.errors} |"
        )
    lines += ["", "Cases:", ""]
    lines += [f"- `{name}`: {label}" for name, label in labels.items()]
    return "\n".join(lines) + "\n"


def write_json(path: Path, rows: Sequence[Row], meta: dict[str, Any]) -> None:
    doc = {
        "meta": meta,
        "rows": [asdict(r) for r in rows],
        "ratios": [asdict(q) for q in ratios(rows)],
        "goals": [asdict(g) for g in goals(rows)],
    }
    path.write_text(json.dumps(_clean(doc), indent=2, allow_nan=False) + "\n")


def _clean(value: Any) -> Any:
    """NaN (a run without a single completed call) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_plot(path: Path, rows: Sequence[Row], title: str) -> None:
    """Throughput against client processes, one panel per case, one line per path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r.case for r in rows))
    ncols = min(2, len(cases))
    nrows = math.ceil(len(cases) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(cases) :]:
        ax.set_visible(False)
    for ax, case in zip(flat, cases, strict=False):
        mine = [r for r in rows if r.case == case]
        for key, label in PATHS.items():
            points = sorted((r.clients, r.rps) for r in mine if r.path == key)
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=label)
        clients = sorted({r.clients for r in mine})
        ax.set_xscale("log", base=2)
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.set_title(case, fontsize=10)
        ax.set_xlabel("client processes")
        ax.set_yscale("log")  # in-process ORT is orders of magnitude above the servers
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("requests / s (log)")
    flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
