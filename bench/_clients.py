"""Client processes: each drives one path (in-process ORT, plain gRPC, sealed) in a timed loop.

The parent keeps a ``ClientPool`` of worker processes (this file run as a script) and talks to
them over stdin/stdout, one JSON object a line (``@@ `` before each answer, so nothing else a
library prints is taken for one):

- ``prepare``: connect (the sealed path attests here, once per process and server), run a few
  warm-up calls, answer with a checksum of the output (every path must give the same answer);
- ``go``: wait until ``start_at`` (``time.monotonic``, the same clock in every process on
  Linux), call in a loop until ``end_at``, answer with every latency, the errors, the span and
  the CPU time the process used;
- ``exit``.

In-process ORT is one worker running ``threads`` threads on one ``InferenceSession``: no server,
no IPC, the upper bound.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["ClientPool", "RunResult"]

_PREFIX = "@@ "
_REPLY_SECONDS = 300.0


# -- the worker (this file run as a script) ------------------------------------------------------


def _caller(spec: dict[str, Any], cache: dict[str, Any]) -> Callable[[], npt.NDArray[Any]]:
    from _models import CASES, INPUT, OUTPUT

    x = CASES[spec["case"]].input()
    path = spec["path"]
    if path == "inprocess":
        import onnxruntime as ort

        key = f"ort:{spec['model_path']}"
        if key not in cache:
            cache[key] = ort.InferenceSession(
                spec["model_path"], providers=["CPUExecutionProvider"]
            )
        session = cache[key]
        return lambda: session.run([OUTPUT], {INPUT: x})[0]
    if path == "plain":
        import grpc
        from _plain_server import MESSAGE_OPTIONS, METHOD

        key = f"plain:{spec['target']}"
        if key not in cache:
            cache[key] = grpc.insecure_channel(spec["target"], MESSAGE_OPTIONS)
        stub = cache[key].unary_unary(METHOD)
        meta = (("x-model", spec["model"]), ("x-shape", ",".join(map(str, x.shape))))

        def plain() -> npt.NDArray[Any]:
            raw, call = stub.with_call(x.tobytes(), metadata=meta, timeout=60)
            shape = dict(call.trailing_metadata())["x-shape"]
            return np.frombuffer(raw, np.float32).reshape([int(d) for d in shape.split(",")])

        return plain
    if path == "sealed":
        from veil.sdk import AttestationPolicy, Client

        key = f"sealed:{spec['target']}"
        if key not in cache:
            policy = AttestationPolicy.simulated_for_tests(Path(spec["root_pem"]))
            client = Client(spec["target"], api_key=spec["api_key"], policy=policy)
            client.attest()  # once per process and server; every call below reuses it
            cache[key] = client
        client = cache[key]
        model = spec["model"]
        return lambda: client.infer(model, {INPUT: x})[OUTPUT]
    raise ValueError(f"unknown path {path!r}")


def _loop(call: Callable[[], object], start_at: float, end_at: float, out: dict[str, Any]) -> None:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    time.sleep(max(0.0, start_at - time.monotonic()))
    last = start_at
    while (t0 := time.monotonic()) < end_at:
        try:
            call()
        except Exception as exc:  # counted and named; the loop goes on, as a user's would
            errors[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
            time.sleep(0.01)
            continue
        last = time.monotonic()
        latencies.append(round(1000 * (last - t0), 4))
    out.update(latencies_ms=latencies, errors=dict(errors), span=max(last - start_at, 1e-9))


def _serve_commands() -> None:
    warnings.simplefilter("ignore")  # the simulated TEE's test root warns on every verification
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    cache: dict[str, Any] = {}
    call: Callable[[], npt.NDArray[Any]] | None = None
    threads = 1

    def reply(**fields: Any) -> None:
        sys.stdout.write(_PREFIX + json.dumps(fields) + "\n")
        sys.stdout.flush()

    reply(ok=True, pid=os.getpid())
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "prepare":
                call = _caller(cmd, cache)
                threads = int(cmd.get("threads", 1))
                y = call()
                for _ in range(int(cmd.get("warmup", 3))):
                    y = call()
                reply(ok=True, checksum=float(np.sum(np.asarray(y, np.float64))), shape=y.shape)
            elif op == "go":
                assert call is not None, "go before prepare"
                outs: list[dict[str, Any]] = [{} for _ in range(threads)]
                workers = [
                    threading.Thread(target=_loop, args=(call, cmd["start_at"], cmd["end_at"], o))
                    for o in outs
                ]
                before = os.times()
                for w in workers:
                    w.start()
                for w in workers:
                    w.join()
                after = os.times()
                cpu = (after.user - before.user) + (after.system - before.system)
                reply(ok=True, threads=outs, cpu_s=cpu)
            elif op == "exit":
                reply(ok=True)
                return
        except Exception as exc:
            reply(ok=False, error=f"{type(exc).__name__}: {exc}")


# -- the parent side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunResult:
    """One timed run: every call's latency, errors by kind, throughput over the window."""

    latencies_ms: tuple[float, ...]
    errors: dict[str, int]
    rps: float
    checksums: tuple[float, ...]
    started_at: float  # time.monotonic() when the timed window opened
    client_cpu_s: float  # CPU seconds the client processes spent in the window, all together
    probes: dict[str, float]  # how much each probe's reading grew over the window
    window_s: float  # wall seconds between the probes' readings

    @property
    def calls(self) -> int:
        return len(self.latencies_ms)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


class _Worker:
    def __init__(self, index: int, log: Path) -> None:
        self.log = log
        with log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=sink,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        self._buffer = b""

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def receive(self, deadline: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                text = line.decode(errors="replace")
                if text.startswith(_PREFIX):
                    answer: dict[str, Any] = json.loads(text[len(_PREFIX) :])
                    return answer
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"client process {self.proc.pid} did not answer")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    tail = self.log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"client process {self.proc.pid} ended:\n{tail}")
                self._buffer += chunk


class ClientPool:
    """``size`` client processes, started once and reused by every run (imports cost seconds)."""

    def __init__(self, size: int, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self._workers = [_Worker(i, workdir / f"client-{i}.log") for i in range(size)]
        deadline = time.monotonic() + _REPLY_SECONDS
        for worker in self._workers:
            worker.receive(deadline)

    @property
    def size(self) -> int:
        return len(self._workers)

    def _all(self, workers: list[_Worker], **cmd: Any) -> list[dict[str, Any]]:
        for worker in workers:
            worker.send(**cmd)
        deadline = time.monotonic() + _REPLY_SECONDS + float(cmd.get("seconds", 0))
        answers = [worker.receive(deadline) for worker in workers]
        failed = [a["error"] for a in answers if not a.get("ok")]
        if failed:
            raise RuntimeError(f"{len(failed)} client process(es) failed {cmd['op']}: {failed[0]}")
        return answers

    def run(
        self,
        processes: int,
        spec: dict[str, Any],
        seconds: float,
        *,
        threads: int = 1,
        probes: Mapping[str, Callable[[], float]] | None = None,
    ) -> RunResult:
        """Prepare ``processes`` workers with ``spec``, then loop for ``seconds`` all together.

        Each probe (e.g. the server's CPU seconds so far) is read as the window opens and again
        once every client has answered, so warm-up calls are not counted.
        """
        probes = probes or {}
        if processes > len(self._workers):
            raise ValueError(f"{processes} processes asked, the pool has {len(self._workers)}")
        workers = self._workers[:processes]
        prepared = self._all(workers, op="prepare", threads=threads, **spec)
        start_at = time.monotonic() + 0.2
        before = {name: probe() for name, probe in probes.items()}
        t0 = time.monotonic()
        answers = self._all(
            workers, op="go", start_at=start_at, end_at=start_at + seconds, seconds=seconds
        )
        window = time.monotonic() - t0
        grown = {name: probe() - before[name] for name, probe in probes.items()}
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        rps = 0.0
        for answer in answers:
            for out in answer["threads"]:
                latencies.extend(out["latencies_ms"])
                errors.update(out["errors"])
                rps += len(out["latencies_ms"]) / out["span"]
        return RunResult(
            latencies_ms=tuple(latencies),
            errors=dict(errors),
            rps=rps,
            checksums=tuple(p["checksum"] for p in prepared),
            started_at=start_at,
            client_cpu_s=sum(a["cpu_s"] for a in answers),
            probes=grown,
            window_s=window,
        )

    def close(self) -> None:
        for worker in self._workers:
            try:
                worker.send(op="exit")
                assert worker.proc.stdin is not None
                worker.proc.stdin.close()
            except OSError:
                pass
        for worker in self._workers:
            try:
                worker.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    _serve_commands()
