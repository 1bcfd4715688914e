"""A/B two trees' ``veil serve``: interleaved rounds against each, the same client code for both.

    git worktree add /tmp/base HEAD~3
    .venv/bin/python bench/ab_servers.py --base /tmp/base [--cases mlp-1kb,mlp-64kb]
        [--clients 1] [--seconds 3] [--rounds 4]

Starts the sealed server of the base tree (``A``: its source roots first on ``PYTHONPATH``) and of
this tree (``B``), each in its own process on 127.0.0.1 with the benchmark's models, and
``--clients`` client processes per server that attest once and wait. Each round runs every case
against A then B (B then A in odd rounds), so drifting background load (this VM's throughput
moves by 2x within minutes) hits both alike. The clients run the *base* tree's SDK for both
servers: only the server differs. Prints, per case and server, the throughput of every round, its
median, the server's CPU ms per call and the clients' median p50. A single ``bench_inference.py``
run cannot tell a 10 % server change from the machine's drift; this can.

``--burst 32`` first loads each server with 32 client processes for ``--burst-seconds`` (the first
case), so the rounds measure a server after a burst (its thread pool grown), as one in service is.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _clients import ClientPool
from _models import CASES, write_models
from _servers import API_KEY, VeilServer, cpu_seconds, start_veil

_ROOTS = ("enclave", "sdk", "privacy", "watermark", "protos")
_CLIENT = """
import sys, time, warnings
from pathlib import Path
sys.path.insert(0, sys.argv[4])
warnings.simplefilter("ignore")  # the simulated TEE's test root warns on every verification
from _models import CASES
from veil.sdk import AttestationPolicy, Client
client = Client(sys.argv[1], api_key=sys.argv[2],
                policy=AttestationPolicy.simulated_for_tests(Path(sys.argv[3])))
client.attest()
inputs = {name: CASES[name].input() for name in CASES}
print("ready", flush=True)
for command in sys.stdin:
    name, seconds = command.split()
    x = inputs[name]
    for _ in range(5):
        client.infer(name, {"x": x})
    latencies = []
    end = time.monotonic() + float(seconds)
    while (start := time.monotonic()) < end:
        client.infer(name, {"x": x})
        latencies.append(time.monotonic() - start)
    latencies.sort()
    print(len(latencies), latencies[len(latencies) // 2], flush=True)
"""


def _source_path(tree: Path) -> str:
    return os.pathsep.join(str(tree / root / "src") for root in _ROOTS)


def _start(label: str, work: Path, models: dict[str, Path], pythonpath: str) -> VeilServer:
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = pythonpath
    try:
        return start_veil(label, work / f"data-{label}", models)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the other tree (A)")
    parser.add_argument("--cases", default="mlp-1kb,mlp-64kb")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--burst",
        type=int,
        default=0,
        metavar="CLIENTS",
        help="first load each server with this many client processes (the first case, "
        "--burst-seconds): the rounds then measure a server after a burst",
    )
    parser.add_argument("--burst-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {sorted(CASES)}")
    warnings.simplefilter("ignore")
    base_path = _source_path(args.base.resolve())
    bench = str(Path(__file__).resolve().parent)
    with tempfile.TemporaryDirectory(prefix="veil-ab-") as tmp:
        work = Path(tmp)
        models = write_models(work / "models", [CASES[c] for c in cases])
        servers = {"A": _start("A", work, models, base_path), "B": _start("B", work, models, "")}
        clients: dict[str, list[subprocess.Popen[str]]] = {}
        try:
            env = dict(os.environ, PYTHONPATH=base_path)
            for label, server in servers.items():
                command = [sys.executable, "-c", _CLIENT, server.address, API_KEY]
                command += [str(server.root_pem), bench]
                clients[label] = [
                    subprocess.Popen(
                        command,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                        env=env,
                    )
                    for _ in range(args.clients)
                ]
            for procs in clients.values():
                for proc in procs:
                    assert proc.stdout is not None
                    if proc.stdout.readline().strip() != "ready":
                        raise RuntimeError("a client process did not attest")
            if args.burst:
                _burst(servers, cases[0], args.burst, args.burst_seconds, work)
            rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
            for round_ in range(args.rounds):
                order = ["A", "B"] if round_ % 2 == 0 else ["B", "A"]
                for case in cases:
                    for label in order:
                        rows.setdefault((case, label), []).append(
                            _round(servers[label], clients[label], case, args.seconds)
                        )
            print(f"A = {args.base}, B = this tree; {args.clients} client process(es) each")
            for case in cases:
                for label in ("A", "B"):
                    got = rows[(case, label)]
                    per_round = " ".join(f"{r[0]:6.0f}" for r in got)
                    print(
                        f"{case:12s} {label} req/s {per_round} | median "
                        f"{statistics.median(r[0] for r in got):6.0f}, server CPU "
                        f"{statistics.median(r[1] for r in got):.3f} ms/call, p50 "
                        f"{statistics.median(r[2] for r in got):.2f} ms"
                    )
        finally:
            for procs in clients.values():
                for proc in procs:
                    proc.kill()
                    proc.wait()
            for server in servers.values():
                server.stop()
    return 0


def _burst(
    servers: dict[str, VeilServer], case: str, clients: int, seconds: float, work: Path
) -> None:
    """Load each server in turn with ``clients`` processes of this tree's SDK."""
    with ClientPool(clients, work / "burst") as pool:
        for label, server in servers.items():
            spec = {
                "case": case,
                "path": "sealed",
                "target": server.address,
                "model": case,
                "root_pem": str(server.root_pem),
                "api_key": API_KEY,
            }
            result = pool.run(clients, spec, seconds)
            threads = len(os.listdir(f"/proc/{server.pid}/task"))
            print(f"burst on {label}: {clients} clients, {result.rps:.0f} req/s; {threads} threads")


def _round(
    server: VeilServer, procs: list[subprocess.Popen[str]], case: str, seconds: float
) -> tuple[float, float, float]:
    """One timed run of every client: (req/s, server CPU ms per call, median client p50 ms)."""
    cpu0 = cpu_seconds(server.pid)
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(f"{case} {seconds}\n")
        proc.stdin.flush()
    answers = []
    for proc in procs:
        assert proc.stdout is not None
        answers.append(proc.stdout.readline().split())
    calls = sum(int(a[0]) for a in answers)
    cpu_ms = (cpu_seconds(server.pid) - cpu0) / max(calls, 1) * 1e3
    return calls / seconds, cpu_ms, statistics.median(float(a[1]) for a in answers) * 1e3


if __name__ == "__main__":
    sys.exit(main())
