"""Server configuration: ``DATA_DIR/config.toml`` (tenants, limits, providers, TLS).

Only the CLI and the server's start-up read files and environment; everything below receives a
``ServerConfig``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from veil.enclave._batching import BatchingConfig
from veil.enclave._files import write_private
from veil.enclave._limits import Limits
from veil.enclave._telemetry import ObservabilityConfig
from veil.sdk.errors import ConfigError

__all__ = ["DEFAULT_TENANT", "SYSTEM_LOG", "ServerConfig", "Tenant", "TlsConfig", "ensure_config"]

DEFAULT_TENANT = "default"
SYSTEM_LOG = "system"  # the audit log of service-wide events; no tenant may take this name
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass(frozen=True)
class Tenant:
    """A tenant and the SHA-256 of its API key (the key itself is never stored)."""

    name: str
    api_key_sha256: bytes

    def accepts(self, api_key: str) -> bool:
        return hmac.compare_digest(hashlib.sha256(api_key.encode()).digest(), self.api_key_sha256)

    @property
    def key_id(self) -> str:
        """A public identifier of the tenant's API key (first 8 bytes of its SHA-256, hex)."""
        return self.api_key_sha256[:8].hex()


@dataclass(frozen=True)
class TlsConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # set: mutual TLS, clients must present a certificate


@dataclass(frozen=True)
class ServerConfig:
    """Everything the service is configured with. Part of the measurement (see ``canonical``)."""

    data_dir: Path
    tenants: MappingProxyType[str, Tenant]
    max_model_bytes: int = 256 * 1024 * 1024
    max_message_bytes: int = 64 * 1024 * 1024
    max_chunk_bytes: int = 4 * 1024 * 1024
    replay_window_seconds: int = 120
    key_epoch_seconds: int = 24 * 3600
    providers: tuple[str, ...] = _PROVIDERS
    allowed_domains: tuple[str, ...] = ("", "ai.onnx", "ai.onnx.ml")
    max_dataset_bytes: int = 256 * 1024 * 1024
    budget_epsilon: float = 10.0
    budget_delta: float = 1e-5
    tls: TlsConfig | None = None
    limits: Limits = field(default_factory=Limits)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    reflection: bool = False  # gRPC server reflection (a debugging aid); off in production
    workers: int = 1  # serving processes (veil.enclave._workers); not security-relevant
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def canonical(self) -> bytes:
        """Security-relevant configuration as canonical bytes, for the measurement."""
        lines = [
            f"max_model_bytes={self.max_model_bytes}",
            f"max_message_bytes={self.max_message_bytes}",
            f"max_chunk_bytes={self.max_chunk_bytes}",
            f"replay_window_seconds={self.replay_window_seconds}",
            f"key_epoch_seconds={self.key_epoch_seconds}",
            f"providers={','.join(self.providers)}",
            f"allowed_domains={','.join(self.allowed_domains)}",
            f"tls={self._tls_mode()}",
            f"max_dataset_bytes={self.max_dataset_bytes}",
            f"budget={self.budget_epsilon!r},{self.budget_delta!r}",
            *self.limits.canonical(),
            *self.batching.canonical(),
            f"reflection={self.reflection}",
            *self.observability.canonical(),
        ]
        for name in sorted(self.tenants):
            lines.append(f"tenant={name}:{self.tenants[name].api_key_sha256.hex()}")
        return ("\n".join(lines) + "\n").encode()

    def _tls_mode(self) -> str:
        if self.tls is None:
            return "none"
        return "mtls" if self.tls.client_ca_file is not None else "tls"

    @classmethod
    def load(cls, data_dir: Path) -> ServerConfig:
        """Read ``data_dir/config.toml``; raise ``ConfigError`` naming the bad field."""
        path = data_dir / "config.toml"
        try:
            doc = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(
                f"{path} does not exist (run `veil serve` once to create it)"
            ) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        return cls.from_dict(doc, data_dir=data_dir, source=str(path))

    @classmethod
    def from_dict(
        cls, doc: dict[str, Any], *, data_dir: Path, source: str = "config"
    ) -> ServerConfig:
        tenants_doc = doc.get("tenants", {})
        if not isinstance(tenants_doc, dict) or not tenants_doc:
            raise ConfigError(f"{source}: [tenants] must define at least one tenant")
        tenants: dict[str, Tenant] = {}
        for name, spec in tenants_doc.items():
            if not _TENANT_RE.match(name):
                raise ConfigError(f"{source}: tenant name {name!r} is not [A-Za-z0-9._-]{{1,64}}")
            if name == SYSTEM_LOG:
                raise ConfigError(f"{source}: tenant name {name!r} is reserved for the service log")
            digest = spec.get("api_key_sha256") if isinstance(spec, dict) else None
            if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ConfigError(f"{source}: tenants.{name}.api_key_sha256 must be 64 hex digits")
            tenants[name] = Tenant(name=name, api_key_sha256=bytes.fromhex(digest))
        server = doc.get("server", {})
        if not isinstance(server, dict):
            raise ConfigError(f"{source}: [server] must be a table")

        def pos_int(key: str, default: int) -> int:
            value = server.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{source}: server.{key} must be a positive integer")
            return value

        privacy = doc.get("privacy", {})
        if not isinstance(privacy, dict):
            raise ConfigError(f"{source}: [privacy] must be a table")
        epsilon = privacy.get("budget_epsilon", cls.budget_epsilon)
        delta = privacy.get("budget_delta", cls.budget_delta)
        if isinstance(epsilon, bool) or not isinstance(epsilon, int | float) or not epsilon > 0:
            raise ConfigError(f"{source}: privacy.budget_epsilon must be a positive number")
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
            raise ConfigError(f"{source}: privacy.budget_delta must be in (0, 1)")
        max_dataset = privacy.get("max_dataset_bytes", cls.max_dataset_bytes)
        if isinstance(max_dataset, bool) or not isinstance(max_dataset, int) or max_dataset <= 0:
            raise ConfigError(f"{source}: privacy.max_dataset_bytes must be a positive integer")
        reflection = server.get("reflection", False)
        if not isinstance(reflection, bool):
            raise ConfigError(f"{source}: server.reflection must be true or false")
        providers = tuple(server.get("providers", _PROVIDERS))
        unknown = [p for p in providers if p not in _PROVIDERS]
        if unknown or not providers:
            raise ConfigError(f"{source}: server.providers: unknown {unknown} (use {_PROVIDERS})")
        tls = None
        tls_doc = doc.get("tls")
        if tls_doc is not None:
            try:
                tls = TlsConfig(
                    cert_file=data_dir / tls_doc["cert"],
                    key_file=data_dir / tls_doc["key"],
                    client_ca_file=(data_dir / tls_doc["client_ca"])
                    if "client_ca" in tls_doc
                    else None,
                )
            except (KeyError, TypeError) as exc:
                raise ConfigError(
                    f"{source}: [tls] needs cert and key (and optional client_ca)"
                ) from exc
        return cls(
            data_dir=data_dir,
            tenants=MappingProxyType(tenants),
            max_model_bytes=pos_int("max_model_bytes", cls.max_model_bytes),
            max_message_bytes=pos_int("max_message_bytes", cls.max_message_bytes),
            max_chunk_bytes=pos_int("max_chunk_bytes", cls.max_chunk_bytes),
            replay_window_seconds=pos_int("replay_window_seconds", cls.replay_window_seconds),
            key_epoch_seconds=pos_int("key_epoch_seconds", cls.key_epoch_seconds),
            providers=providers,
            allowed_domains=tuple(server.get("allowed_domains", cls.allowed_domains)),
            max_dataset_bytes=max_dataset,
            budget_epsilon=float(epsilon),
            budget_delta=float(delta),
            tls=tls,
            limits=Limits.from_dict(doc.get("limits"), source=source),
            batching=BatchingConfig.from_dict(doc.get("batching"), source=source),
            reflection=reflection,
            workers=pos_int("workers", cls.workers),
            observability=ObservabilityConfig.from_dict(doc, source=source),
            extra={
                k: v
                for k, v in doc.items()
                if k
                not in {"tenants", "server", "tls", "privacy", "limits", "batching"}
                | {"metrics", "tracing", "logging"}
            },
        )


def ensure_config(data_dir: Path) -> tuple[ServerConfig, Path | None]:
    """Load the config, creating one with tenant ``default`` on first start.

    Returns the config and, when a key was just created, the path of ``default.key`` (0600).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "config.toml"
    created = None
    if not path.exists():
        api_key = "veil_" + secrets.token_urlsafe(32)
        digest = hashlib.sha256(api_key.encode()).hexdigest()
        key_path = data_dir / f"{DEFAULT_TENANT}.key"
        write_private(key_path, (api_key + "\n").encode())
        write_private(
            path,
            (
                "# Veil enclave configuration. API keys are stored as SHA-256 digests only.\n"
                "[server]\n"
                f"max_model_bytes = {ServerConfig.max_model_bytes}\n"
                f"replay_window_seconds = {ServerConfig.replay_window_seconds}\n\n"
                f"[tenants.{DEFAULT_TENANT}]\n"
                f'api_key_sha256 = "{digest}"\n'
            ).encode(),
        )
        created = key_path
    return ServerConfig.load(data_dir), created
