"""Dynamic batching: concurrent requests for one model run as one ONNX Runtime call.

Configured per model in ``config.toml`` (absent: off, every request runs alone)::

    [batching]
    max_batch = 32          # most requests merged into one run (>= 2 turns batching on)
    max_delay_ms = 0        # how long a run may wait to fill up (0: only what already queued)
    [batching.models."acme/scorer"]
    max_batch = 64
    max_delay_ms = 1

How it runs (no thread of its own): requests for the same *group* — one tenant's model at one
version and memory limit, the same output names, and inputs of the same names, dtypes and
shapes after the first dimension — queue together. One run per group is under way at a time;
the request that finds the group idle leads: it waits at most ``max_delay_ms`` for the batch to
fill, takes up to ``max_batch`` requests from the queue, concatenates their inputs along the
first dimension, runs once, and hands every request its own rows of each output. Then it passes
the lead to the first request still queued (which arrived while the run was under way) and
returns its own answer. At one client nothing waits; under load, every run takes what queued
during the previous one.

A group never mixes tenants or models, so a batch is one tenant's data in one tenant's session,
and each response is still sealed to its own client. A batched run that fails (a bad row, the
memory cap, the deadline) is retried request by request, so each request gets its own error.
A model is batched only if every input and output has a dynamic first dimension and an answer
gives every output ``total rows`` rows; otherwise its requests run alone. Batching is only right
for models whose rows are independent (an MLP or CNN at inference is; a model that normalises or
reduces over the batch dimension is not): the operator turns it on per model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt

from veil.sdk.errors import ConfigError

__all__ = ["BatchPolicy", "Batcher", "BatchingConfig"]

Arrays = dict[str, npt.NDArray[np.generic]]
MAX_BATCH = 4096
MAX_DELAY_MS = 1000.0


@dataclass(frozen=True)
class BatchPolicy:
    """One model's merging: at most ``max_batch`` requests a run, waiting ``max_delay_ms``."""

    max_batch: int = 1
    max_delay_ms: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1


NO_BATCHING = BatchPolicy()


@dataclass(frozen=True)
class BatchingConfig:
    """``[batching]``: the default policy and per-model (``tenant/name``) overrides."""

    default: BatchPolicy = NO_BATCHING
    models: Mapping[str, BatchPolicy] = field(default_factory=lambda: MappingProxyType({}))

    def for_model(self, tenant: str, model: str) -> BatchPolicy:
        return self.models.get(f"{tenant}/{model}", self.default)

    @property
    def configured(self) -> bool:
        return self.default.enabled or bool(self.models)

    def canonical(self) -> list[str]:
        """Lines for the configuration's canonical form (none when batching is not configured)."""
        if not self.configured:
            return []
        lines = [f"batching={_canon(self.default)}"]
        lines += [f"batching.models.{k}={_canon(self.models[k])}" for k in sorted(self.models)]
        return lines

    @classmethod
    def from_dict(cls, doc: Any, *, source: str) -> BatchingConfig:
        if doc is None:
            return cls()
        if not isinstance(doc, dict):
            raise ConfigError(f"{source}: [batching] must be a table")
        doc = dict(doc)
        models_doc = doc.pop("models", {})
        default = _policy(doc, NO_BATCHING, f"{source}: batching")
        if not isinstance(models_doc, dict):
            raise ConfigError(f"{source}: batching.models must be a table")
        models = {}
        for key, spec in models_doc.items():
            tenant, sep, name = key.partition("/")
            if not sep or not tenant or not name or "/" in name:
                raise ConfigError(f'{source}: batching.models."{key}" must be "tenant/model"')
            models[key] = _policy(spec, default, f'{source}: batching.models."{key}"')
        return cls(default=default, models=MappingProxyType(models))


def _canon(policy: BatchPolicy) -> str:
    return f"{policy.max_batch},{policy.max_delay_ms!r}"


def _policy(doc: Any, base: BatchPolicy, where: str) -> BatchPolicy:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(doc) - {"max_batch", "max_delay_ms"}
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
    size = doc.get("max_batch", base.max_batch)
    delay = doc.get("max_delay_ms", base.max_delay_ms)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH:
        raise ConfigError(f"{where}.max_batch must be an integer from 1 to {MAX_BATCH}")
    if (
        isinstance(delay, bool)
        or not isinstance(delay, int | float)
        or not 0 <= delay <= MAX_DELAY_MS
    ):
        raise ConfigError(f"{where}.max_delay_ms must be a number from 0 to {MAX_DELAY_MS:g}")
    return BatchPolicy(max_batch=size, max_delay_ms=float(delay))


def group_of(inputs: Mapping[str, npt.NDArray[np.generic]]) -> tuple[Hashable, int] | None:
    """The merge signature of one request's inputs and its row count; None if it cannot merge.

    Every input must have at least one dimension, all the same first dimension (the rows).
    """
    rows = None
    parts = []
    for name in sorted(inputs):
        array = inputs[name]
        if array.ndim == 0:
            return None
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            return None
        parts.append((name, array.dtype.str, array.shape[1:]))
    if rows is None or rows == 0:
        return None
    return tuple(parts), rows


class _Item:
    __slots__ = ("done", "error", "inputs", "lead", "result", "rows")

    def __init__(self, inputs: Arrays, rows: int) -> None:
        self.inputs = inputs
        self.rows = rows
        self.done = threading.Event()
        self.lead = False
        self.result: Arrays | None = None
        self.error: BaseException | None = None


@dataclass
class _Group:
    queue: list[_Item] = field(default_factory=list)
    busy: bool = False


class Batcher:
    """Merges concurrent runs of one group (see the module docstring); thread-safe."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._groups: dict[Hashable, _Group] = {}
        self._clock = clock
        self._runs = 0
        self._merged = 0

    @property
    def stats(self) -> tuple[int, int]:
        """(runs made, requests served by them) since start: their ratio is the mean batch."""
        with self._lock:
            return self._runs, self._merged

    def run(
        self,
        key: Hashable,
        inputs: Arrays,
        policy: BatchPolicy,
        execute: Callable[[Arrays], Arrays],
    ) -> Arrays:
        """``execute(inputs)``, merged with concurrent calls of the same ``key`` and shapes.

        ``execute`` runs the model on (merged) inputs and returns every output by name.
        """
        grouped = group_of(inputs) if policy.enabled else None
        if grouped is None:
            return execute(inputs)
        signature, rows = grouped
        group_key = (key, signature)
        item = _Item(inputs, rows)
        with self._lock:
            group = self._groups.setdefault(group_key, _Group())
            group.queue.append(item)
            self._arrived.notify_all()
            if group.busy:
                lead = False
            else:
                group.busy = lead = True
        if not lead:
            item.done.wait()
            if not item.lead:
                return _outcome(item)
        self._lead(group_key, group, policy, execute)
        return _outcome(item)

    def _lead(
        self,
        group_key: Hashable,
        group: _Group,
        policy: BatchPolicy,
        execute: Callable[[Arrays], Arrays],
    ) -> None:
        """Take a batch from the front of the queue (it includes the leader), run, hand over."""
        with self._lock:
            if policy.max_delay_ms > 0 and len(group.queue) < policy.max_batch:
                deadline = self._clock() + policy.max_delay_ms / 1000
                while len(group.queue) < policy.max_batch:
                    left = deadline - self._clock()
                    if left <= 0:
                        break
                    self._arrived.wait(left)
            batch = group.queue[: policy.max_batch]
            del group.queue[: policy.max_batch]
        try:
            _execute(batch, execute)
        finally:
            with self._lock:
                self._runs += 1
                self._merged += len(batch)
                if group.queue:  # arrived during the run: the first of them leads next
                    successor = group.queue[0]
                    successor.lead = True
                    successor.done.set()
                else:
                    group.busy = False
                    self._groups.pop(group_key, None)
            for item in batch:
                item.done.set()


def _outcome(item: _Item) -> Arrays:
    if item.error is not None:
        raise item.error
    assert item.result is not None
    return item.result


def _execute(batch: Sequence[_Item], execute: Callable[[Arrays], Arrays]) -> None:
    """Run a batch as one call and split it; alone, or one by one if that is not possible."""
    if len(batch) > 1:
        try:
            merged = {
                name: np.concatenate([item.inputs[name] for item in batch])
                for name in batch[0].inputs
            }
            outputs = execute(merged)
        except Exception:  # each request gets its own answer or error, run alone
            outputs = None
        total = sum(item.rows for item in batch)
        if outputs is not None and all(
            o.ndim > 0 and o.shape[0] == total for o in outputs.values()
        ):
            start = 0
            for item in batch:
                end = start + item.rows
                item.result = {name: o[start:end] for name, o in outputs.items()}
                start = end
            return
    for item in batch:
        try:
            item.result = execute(item.inputs)
        except BaseException as exc:  # delivered to the request's own thread
            item.error = exc
