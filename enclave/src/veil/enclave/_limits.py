"""Resource limits the enclave enforces on every caller: ``[limits]`` in ``config.toml``.

Limits protect the service from one hostile or careless tenant: a wall clock and a memory
ceiling on every inference, bounds on model graphs (loop trip counts, nesting), stream and
upload concurrency, idle streams, and disk headroom kept free for the audit log.

Per-tenant and per-model overrides of the inference limits::

    [limits]
    inference_timeout_seconds = 30
    [limits.tenants.acme]
    inference_timeout_seconds = 5
    [limits.models."acme/scorer"]
    inference_timeout_seconds = 60

A model entry (``tenant/name``) wins over its tenant's entry, which wins over the default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from veil.sdk.errors import ConfigError

__all__ = ["InferenceLimits", "Limits"]

GiB = 1024 * 1024 * 1024
MiB = 1024 * 1024
_MODEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}/[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class InferenceLimits:
    """What one inference may use: wall-clock seconds and bytes of ONNX Runtime memory."""

    timeout_seconds: float = 30.0
    memory_bytes: int = 2 * GiB


@dataclass(frozen=True)
class Limits:
    """Every limit of the service; defaults suit one enclave of a few cores and 8 GiB."""

    inference: InferenceLimits = field(default_factory=InferenceLimits)
    # Admission of uploaded models (static bounds; runtime bounds are ``inference``).
    max_loop_trip_count: int = 1_000_000
    max_graph_depth: int = 8
    max_graph_nodes: int = 100_000
    # Connections and streams.
    max_concurrent_uploads: int = 4
    max_concurrent_inferences: int = 32
    max_concurrent_trainings: int = 2
    max_concurrent_calls: int = 64  # every other sealed call: listing, deleting, audit reads
    max_streams_per_connection: int = 32
    max_concurrent_rpcs: int = 128
    stream_idle_seconds: float = 30.0
    keepalive_seconds: float = 60.0
    # Sealing sessions (protocol 1.4) held per process; the least recently used go first.
    max_sessions: int = 4096
    session_idle_seconds: float = 600.0
    upload_memory_bytes: int = 64 * MiB  # per upload; beyond it chunks spill to disk, sealed
    # Disk: bytes kept free for the audit log; uploads that would eat into them are refused.
    audit_headroom_bytes: int = 64 * MiB
    # Refused (unauthenticated) calls: one aggregated record per window, per tenant and method.
    refusal_window_seconds: float = 60.0
    tenants: Mapping[str, InferenceLimits] = field(default_factory=lambda: MappingProxyType({}))
    models: Mapping[str, InferenceLimits] = field(default_factory=lambda: MappingProxyType({}))

    def for_model(self, tenant: str, model: str) -> InferenceLimits:
        """The inference limits for ``tenant``'s model ``model`` (name without version)."""
        found = self.models.get(f"{tenant}/{model}")
        if found is not None:
            return found
        return self.tenants.get(tenant, self.inference)

    def canonical(self) -> list[str]:
        """Lines for the configuration's canonical form (part of the measurement)."""
        lines = []
        for f in fields(self):
            if f.name in {"inference", "tenants", "models"}:
                continue
            lines.append(f"limits.{f.name}={getattr(self, f.name)!r}")
        lines.append(f"limits.inference={_canon(self.inference)}")
        for key in sorted(self.tenants):
            lines.append(f"limits.tenants.{key}={_canon(self.tenants[key])}")
        for key in sorted(self.models):
            lines.append(f"limits.models.{key}={_canon(self.models[key])}")
        return lines

    @classmethod
    def from_dict(cls, doc: Any, *, source: str) -> Limits:
        """Parse ``[limits]``; raise ``ConfigError`` naming the bad key."""
        if doc is None:
            return cls()
        if not isinstance(doc, dict):
            raise ConfigError(f"{source}: [limits] must be a table")
        doc = dict(doc)
        tenants_doc = doc.pop("tenants", {})
        models_doc = doc.pop("models", {})
        inference = _inference(doc, InferenceLimits(), f"{source}: limits")
        values: dict[str, Any] = {}
        known = {f.name: f for f in fields(cls) if f.name != "inference"} | {
            "inference_timeout_seconds": None,
            "inference_memory_bytes": None,
        }
        for key, value in doc.items():
            if key not in known:
                raise ConfigError(f"{source}: limits.{key} is not a known limit")
            if key.startswith("inference_"):
                continue
            default = getattr(cls, key)
            where = f"{source}: limits.{key}"
            values[key] = _positive(value, where, float_ok=type(default) is float)
        if not isinstance(tenants_doc, dict) or not isinstance(models_doc, dict):
            raise ConfigError(f"{source}: limits.tenants and limits.models must be tables")
        tenants = {
            name: _inference(spec, inference, f"{source}: limits.tenants.{name}")
            for name, spec in tenants_doc.items()
        }
        models: dict[str, InferenceLimits] = {}
        for key, spec in models_doc.items():
            if not _MODEL_KEY_RE.match(key):
                raise ConfigError(f'{source}: limits.models."{key}" must be "tenant/model"')
            base = tenants.get(key.split("/", 1)[0], inference)
            models[key] = _inference(spec, base, f'{source}: limits.models."{key}"')
        return replace(
            cls(),
            inference=inference,
            tenants=MappingProxyType(tenants),
            models=MappingProxyType(models),
            **values,
        )


def _canon(limits: InferenceLimits) -> str:
    return f"{limits.timeout_seconds!r},{limits.memory_bytes}"


def _positive(value: Any, where: str, *, float_ok: bool) -> Any:
    ok = isinstance(value, int | float) if float_ok else isinstance(value, int)
    if isinstance(value, bool) or not ok or not value > 0:
        kind = "a positive number" if float_ok else "a positive integer"
        raise ConfigError(f"{where} must be {kind}")
    return float(value) if float_ok else value


def _inference(doc: Any, base: InferenceLimits, where: str) -> InferenceLimits:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where} must be a table")
    timeout = doc.get("inference_timeout_seconds", base.timeout_seconds)
    memory = doc.get("inference_memory_bytes", base.memory_bytes)
    extra = set(doc) - {"inference_timeout_seconds", "inference_memory_bytes"}
    if extra and ("limits.tenants." in where or "limits.models." in where):
        raise ConfigError(f"{where}: unknown key(s) {sorted(extra)}")
    return InferenceLimits(
        timeout_seconds=_positive(timeout, f"{where}.inference_timeout_seconds", float_ok=True),
        memory_bytes=_positive(memory, f"{where}.inference_memory_bytes", float_ok=False),
    )
