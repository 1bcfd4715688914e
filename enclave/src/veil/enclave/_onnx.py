"""ONNX Runtime inside the enclave: sessions per model, every run bounded in time and memory.

Admission of uploads lives in ``veil.enclave._admission``; this module runs what was admitted.

What is enforced on every run (``InferenceLimits`` from ``Limits.for_model(tenant, model)``):

- Wall clock: each run gets its own ``ort.RunOptions``; one shared watchdog thread sets
  ``terminate`` at the deadline and the run fails with ``TimedOut`` (DEADLINE_EXCEEDED).
  ``terminate_all`` stops every run in flight and makes later runs fail at once (shutdown).
- Memory: every session is built on its own ONNX Runtime arena capped at the model's
  ``memory_bytes``. ORT only offers caps on environment-level allocators, so the engine
  registers a fresh capped arena just before it builds each session (under a lock) and the
  session keeps that arena for life: the ceiling is per session, that is per tenant's model,
  shared by the runs of that model in flight at once. An allocation past the cap fails inside
  ORT and the run answers ``LimitExceeded`` (RESOURCE_EXHAUSTED "memory-limit"); the arena is
  shrunk after every run so idle models hold no memory. Outputs, allocated in that arena, are
  checked against the same limit again once out of ORT. Constant folding is disabled: it would
  allocate outside the arena while a session is built. Not covered: CPU memory that kernels take
  without ORT's allocator (small, per-kernel scratch), and accelerator memory of GPU providers.
- Files: ``check_self_contained`` runs again on every model loaded into a session.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from veil.enclave._admission import (
    DISABLED_OPTIMIZERS,
    TensorSpec,
    ValidatedModel,
    check_self_contained,
    session_options,
    short,
    spec_of,
    validate_onnx,
)
from veil.enclave._batching import NO_BATCHING, Batcher, BatchPolicy
from veil.enclave._errors import InvalidInput, LimitExceeded, Overloaded, TimedOut
from veil.enclave._limits import InferenceLimits
from veil.enclave._watchdog import Watchdog

__all__ = [
    "InferenceEngine",
    "TensorSpec",
    "ValidatedModel",
    "available_providers",
    "validate_onnx",
]

# ORT's words for "an allocation did not fit" (arena cap, allocator, or its own size guard).
_MEMORY_FAILURES = (
    "Available memory of",
    "Failed to allocate memory",
    "bad_alloc",
    "exceeds the supported maximum",
)
# Environment allocators are process-wide: registering one and building the session that
# takes it must not interleave with another engine doing the same.
_ALLOCATOR_LOCK = threading.Lock()
_CPU_ARENA = ort.OrtMemoryInfo(
    "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
)
_MAX_NAMES = 5
Arrays = dict[str, npt.NDArray[np.generic]]
_DEFAULT_LIMITS = InferenceLimits()


def available_providers(preferred: Sequence[str]) -> list[str]:
    """Preferred providers that this ONNX Runtime build offers, in order (CPU always last)."""
    have = set(ort.get_available_providers())
    chosen = [p for p in preferred if p in have]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def _names(names: Sequence[str]) -> str:
    """A short list for a message: at most a few names, each cut short, and the count."""
    shown = ", ".join(short(n) for n in names[:_MAX_NAMES])
    more = f", … {len(names)} in all" if len(names) > _MAX_NAMES else ""
    return f"[{shown}{more}]"


def _dynamic_first(arg: ort.NodeArg) -> bool:
    return len(arg.shape) > 0 and not (isinstance(arg.shape[0], int) and arg.shape[0] >= 0)


@dataclass(frozen=True)
class _Loaded:
    """A session and what every run checks against (ORT builds new ``NodeArg``s on each ask)."""

    session: ort.InferenceSession
    inputs: Mapping[str, TensorSpec]
    outputs: tuple[str, ...]
    batch_inputs: bool  # every input has a dynamic first (batch) dimension
    batch_outputs: frozenset[str]  # the outputs that have one

    @classmethod
    def of(cls, session: ort.InferenceSession) -> _Loaded:
        inputs, outputs = session.get_inputs(), session.get_outputs()
        return cls(
            session=session,
            inputs={a.name: spec_of(a) for a in inputs},
            outputs=tuple(o.name for o in outputs),
            batch_inputs=all(_dynamic_first(a) for a in inputs),
            batch_outputs=frozenset(o.name for o in outputs if _dynamic_first(o)),
        )

    def batchable(self, wanted: Sequence[str]) -> bool:
        """Whether every input and wanted output has a dynamic first (batch) dimension."""
        return self.batch_inputs and all(n in self.batch_outputs for n in wanted)


def _failure(exc: Exception, fired: str, limits: InferenceLimits) -> Exception:
    """The Veil error for an ORT run failure, given what the watchdog did."""
    if fired == "deadline":
        return TimedOut(
            f"inference ran past its {limits.timeout_seconds:g} s limit and was stopped"
        )
    if fired == "shutdown":
        return TimedOut("inference stopped: the service is shutting down")
    text = str(exc)
    if any(marker in text for marker in _MEMORY_FAILURES):
        return LimitExceeded(
            f"inference needs more than its {limits.memory_bytes} byte memory limit"
        )
    first = text.strip().splitlines()[0][:200] if text.strip() else "failed"
    return InvalidInput(f"inference failed: {first}")


def intra_op_layout(requested: int) -> tuple[int, str]:
    """ONNX Runtime's intra-op thread count and its pool threads' CPU affinities.

    ``requested`` 0 means one thread per CPU this process may use. By default ORT pins each pool
    thread to one CPU; a request thread that then lands on that CPU (e.g. after a disk
    interrupt woke it from the audit log's fsync there) shares it with the pinned thread and the
    run takes ~2x as long. So every pool thread may run on every allowed CPU (ORT numbers them
    from 1; one entry per pool thread, the calling thread being the first of ``threads``).
    """
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    threads = requested if requested > 0 else max(1, len(allowed) or (os.cpu_count() or 1))
    if threads <= 1 or not allowed:
        return threads, ""
    every = ",".join(str(cpu + 1) for cpu in allowed)
    return threads, ";".join([every] * (threads - 1))


class InferenceEngine:
    """ONNX Runtime sessions per model, cached (LRU), with input checks against the signature."""

    def __init__(
        self, providers: Sequence[str], *, cache_size: int = 16, intra_op_threads: int = 0
    ) -> None:
        """``intra_op_threads`` 0: ONNX Runtime's default (one per core); a worker process
        of ``[server] workers = N`` takes its share of the cores."""
        self.providers = available_providers(providers)
        self._intra_op_threads = intra_op_threads
        self._cache: OrderedDict[tuple[str, int], _Loaded] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._watchdog = Watchdog()
        self._batcher = Batcher()

    def _session(self, key: str, load: Callable[[], bytes], memory_bytes: int) -> _Loaded:
        with self._lock:
            cached = self._cache.get((key, memory_bytes))
            if cached is not None:
                self._cache.move_to_end((key, memory_bytes))
                return cached
        data = load()
        check_self_contained(data)
        opts = session_options()
        opts.add_session_config_entry("session.use_env_allocators", "1")
        # The pool's threads spin after every run: ~2 ms of CPU per 1 KB request taken from the
        # gRPC, sealing and client work on the same cores (bench/ort_spin.py, PERFORMANCE.md).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        threads, affinities = intra_op_layout(self._intra_op_threads)
        opts.intra_op_num_threads = threads
        if affinities:
            opts.add_session_config_entry("session.intra_op_thread_affinities", affinities)
        # kSameAsRequested (1): the arena never rounds a request up past the cap.
        arena = ort.OrtArenaCfg({"max_mem": memory_bytes, "arena_extend_strategy": 1})
        with _ALLOCATOR_LOCK:
            ort.create_and_register_allocator(_CPU_ARENA, arena)
            session = ort.InferenceSession(
                data,
                sess_options=opts,
                providers=self.providers,
                disabled_optimizers=list(DISABLED_OPTIMIZERS),
            )
        loaded = _Loaded.of(session)
        with self._lock:
            self._cache[(key, memory_bytes)] = loaded
            self._cache.move_to_end((key, memory_bytes))
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return loaded

    def evict(self, prefix: str) -> None:
        with self._lock:
            for cached in [k for k in self._cache if k[0].startswith(prefix)]:
                del self._cache[cached]

    @property
    def in_flight(self) -> int:
        """How many runs are under way now."""
        return self._watchdog.in_flight

    def terminate_all(self) -> int:
        """Stop every run in flight (they answer ``TimedOut``); later runs fail at once."""
        return self._watchdog.terminate_all()

    def run(
        self,
        key: str,
        load: Callable[[], bytes],
        inputs: Mapping[str, npt.NDArray[np.generic]],
        output_names: Sequence[str] = (),
        *,
        limits: InferenceLimits = _DEFAULT_LIMITS,
        batching: BatchPolicy = NO_BATCHING,
    ) -> Arrays:
        """Run the model named ``key`` (loaded on first use) within ``limits``.

        With ``batching`` on, the run may be merged with concurrent runs of the same model and
        input shapes (``veil.enclave._batching``); the answer is this request's rows only.

        Raise ``InvalidInput`` (inputs, outputs, or a run ORT refused), ``TimedOut`` (deadline
        or shutdown), ``LimitExceeded`` (memory) or ``Overloaded`` (after ``terminate_all``).
        """
        if self._watchdog.closed:
            raise Overloaded("the service is shutting down")
        loaded = self._session(key, load, limits.memory_bytes)
        specs = loaded.inputs
        missing = sorted(set(specs) - set(inputs))
        extra = sorted(set(inputs) - set(specs))
        if missing or extra:
            raise InvalidInput(
                f"model inputs are {_names(sorted(specs))}; missing {_names(missing)}, "
                f"unexpected {_names(extra)}"
            )
        for name, arr in inputs.items():
            spec = specs[name]
            if arr.dtype.name != spec.dtype:
                raise InvalidInput(
                    f"input {short(name)} is {arr.dtype.name}, model expects {spec.dtype}"
                )
            if len(arr.shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, arr.shape, strict=True)
            ):
                want_shape = ["?" if d < 0 else d for d in spec.shape]
                raise InvalidInput(
                    f"input {short(name)} has shape {list(arr.shape)}, model expects {want_shape}"
                )
        names = list(loaded.outputs)
        unknown = sorted(set(output_names) - set(names))
        if unknown:
            raise InvalidInput(
                f"unknown output(s) {_names(unknown)}; model outputs are {_names(names)}"
            )
        wanted = list(output_names) or names

        def execute(arrays: Mapping[str, npt.NDArray[np.generic]]) -> Arrays:
            return self._run_once(loaded.session, wanted, arrays, limits)

        if batching.enabled and loaded.batchable(wanted):
            group = (key, limits.memory_bytes, limits.timeout_seconds, tuple(wanted))
            return self._batcher.run(group, dict(inputs), batching, execute)
        return execute(inputs)

    @property
    def batch_stats(self) -> tuple[int, int]:
        """(batched runs, requests they served) since start."""
        return self._batcher.stats

    def _run_once(
        self,
        session: ort.InferenceSession,
        wanted: list[str],
        inputs: Mapping[str, npt.NDArray[np.generic]],
        limits: InferenceLimits,
    ) -> Arrays:
        """One ORT run under the watchdog.

        ``InferenceSession.run`` reads C-contiguous CPU arrays in place (no copy) and answers
        numpy arrays: ~60 µs less per call than ``OrtValue`` feeds and ``run_with_ort_values``
        (the Python wrapping on both sides; docs/PERFORMANCE.md).
        """
        feeds = {
            n: a if a.flags.c_contiguous else np.ascontiguousarray(a) for n, a in inputs.items()
        }
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        ticket = self._watchdog.watch(run_options, limits.timeout_seconds)
        try:
            results = session.run(wanted, feeds, run_options)
        except Exception as exc:  # ORT's runtime errors are untyped
            raise _failure(exc, ticket.fired, limits) from exc
        finally:
            self._watchdog.release(ticket)
        outputs = {n: np.asarray(r) for n, r in zip(wanted, results, strict=True)}
        if sum(a.nbytes for a in outputs.values()) > limits.memory_bytes:
            raise LimitExceeded(
                f"inference needs more than its {limits.memory_bytes} byte memory limit"
            )
        return outputs
