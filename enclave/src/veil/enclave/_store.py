"""Per-tenant model registry, encrypted at rest.

Layout under ``DATA_DIR/models/<tenant>/<name>/``: ``v<N>.onnx.enc`` (AES-256-GCM under the
tenant's storage key, AAD = tenant/name/version) and ``v<N>.json`` (metadata, plaintext digests
only). The metadata file is written last and atomically: a version exists only once it is there,
so a crash or a refused upload never leaves a half-registered model behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from veil.enclave._at_rest import open_blob, seal_blob
from veil.enclave._disk import disk_full_is_storage_full, ensure_space
from veil.enclave._errors import InvalidInput, NotFound
from veil.enclave._files import fsync_dir, write_atomic
from veil.enclave._onnx import TensorSpec, ValidatedModel
from veil.sdk.errors import DecryptionError

__all__ = ["MAX_VERSION", "ModelRecord", "ModelStore", "parse_ref"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
# ASCII digits only (``str.isdigit`` and ``int`` also take "\u00b2" and "\uff11"), no leading
# zero (so one version has one spelling), and no more than ``ModelInfo.version`` (uint32) can carry.
_VERSION_RE = re.compile(r"[1-9][0-9]{0,9}", re.ASCII)
MAX_VERSION = 2**32 - 1
# A directory listing is cached only once its mtime is this much older than the listing: two
# changes inside one tick of the filesystem's clock (1-10 ms) can leave the same mtime.
_RACY_NS = 100_000_000


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``name`` or ``name@version`` → (name, version or None for the latest)."""
    name, sep, version = ref.partition("@")
    if not _NAME_RE.fullmatch(name):
        shown = name if len(name) <= 64 else name[:64] + "…"
        raise InvalidInput(f"model name {shown!r} is not [A-Za-z0-9._-]{{1,64}}")
    if not sep:
        return name, None
    if not _VERSION_RE.fullmatch(version) or int(version) > MAX_VERSION:
        raise InvalidInput(
            f"model version after '@' must be an integer from 1 to {MAX_VERSION} "
            "in ASCII digits, without leading zeros"
        )
    return name, int(version)


@dataclass(frozen=True)
class ModelRecord:
    tenant: str
    name: str
    version: int
    sha256: str
    size: int
    created_at_ms: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def upload(
        cls, tenant: str, name: str, version: int, data: bytes, model: ValidatedModel, now: datetime
    ) -> ModelRecord:
        """The record of ``data`` registered as ``name@version`` at ``now``."""
        return cls(
            tenant=tenant,
            name=name,
            version=version,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            created_at_ms=int(now.timestamp() * 1000),
            inputs=model.inputs,
            outputs=model.outputs,
        )

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ModelRecord:
        doc = json.loads(raw)
        doc["inputs"] = tuple(
            TensorSpec(d["name"], d["dtype"], tuple(d["shape"])) for d in doc["inputs"]
        )
        doc["outputs"] = tuple(
            TensorSpec(d["name"], d["dtype"], tuple(d["shape"])) for d in doc["outputs"]
        )
        return cls(**doc)


class ModelStore:
    """Stores models encrypted under per-tenant keys that only the TEE can derive."""

    def __init__(
        self,
        root: Path,
        *,
        storage_key: Callable[[str], bytes],
        clock: Callable[[], datetime],
        headroom: int = 0,
        sweep: bool = True,
    ) -> None:
        """``sweep=False`` in a worker process: another worker's upload may be in flight."""
        self._root = root
        self._root_text = str(root)
        self._storage_key = storage_key
        self._clock = clock
        self._headroom = headroom
        self._lock = threading.RLock()
        # (tenant, name) -> (the model directory's st_mtime_ns when listed, its live versions)
        self._cache: dict[tuple[str, str], tuple[int, dict[int, ModelRecord]]] = {}
        root.mkdir(parents=True, exist_ok=True)
        if sweep:
            self._sweep_orphans()

    def _dir(self, tenant: str, name: str) -> Path:
        return self._root / tenant / name

    def _sweep_orphans(self) -> None:
        """Remove blobs whose metadata never landed (an interrupted upload).

        ``write_atomic``'s temporaries are removed at enclave start (``remove_temp_files``).
        """
        for blob in self._root.glob("*/*/v*.onnx.enc"):
            meta = blob.with_name(blob.name.replace(".onnx.enc", ".json"))
            if not meta.exists():
                blob.unlink(missing_ok=True)

    @staticmethod
    def _aad(tenant: str, name: str, version: int) -> bytes:
        return f"veil/v1/model-at-rest\0{tenant}\0{name}\0{version}".encode()

    def register(
        self, tenant: str, name: str, data: bytes, validated: ValidatedModel
    ) -> ModelRecord:
        """Encrypt and store ``data`` as the next version of ``name``; return its record."""
        parse_ref(name)
        with self._lock:
            folder = self._dir(tenant, name)
            with disk_full_is_storage_full("the model"):
                folder.mkdir(parents=True, exist_ok=True)
            # Deleted versions leave a tombstone, so a version number is never reused.
            used = [
                int(p.stem[1:])
                for p in (*folder.glob("v*.json"), *folder.glob("v*.deleted"))
                if _VERSION_RE.fullmatch(p.stem[1:])
            ]
            version = max(used, default=0) + 1
            record = ModelRecord.upload(tenant, name, version, data, validated, self._clock())
            blob = seal_blob(self._storage_key(tenant), data, self._aad(tenant, name, version))
            meta = record.to_json()
            ensure_space(folder, len(blob) + len(meta), headroom=self._headroom)
            blob_path, meta_path = folder / f"v{version}.onnx.enc", folder / f"v{version}.json"
            try:
                with disk_full_is_storage_full("the model"):
                    write_atomic(blob_path, blob)
                    write_atomic(meta_path, meta)
            except BaseException:  # nothing registered: the version number stays free
                meta_path.unlink(missing_ok=True)
                blob_path.unlink(missing_ok=True)
                raise
            self._cache.pop((tenant, name), None)
            return record

    def records(self, tenant: str) -> list[ModelRecord]:
        records = [
            ModelRecord.from_json(p.read_bytes()) for p in (self._root / tenant).glob("*/v*.json")
        ]
        return sorted(records, key=lambda r: (r.name, r.version))

    def _versions(self, tenant: str, name: str) -> dict[int, ModelRecord]:
        """The live versions of a model, cached while its directory's mtime stays the same.

        A version appears or goes by a rename inside the model's directory (metadata written
        last; ``v<N>.json`` → ``v<N>.deleted``), which changes the directory's ``st_mtime_ns``:
        one ``stat`` per resolve sees what another process (a worker) registered or deleted.
        """
        key = (tenant, name)
        try:  # a str path: pathlib's joins cost more than the stat on this per-call path
            stamp = os.stat(os.path.join(self._root_text, tenant, name)).st_mtime_ns
        except FileNotFoundError:
            with self._lock:
                self._cache.pop(key, None)
            return {}
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            listed_at = time.time_ns()
            versions: dict[int, ModelRecord] = {}
            for path in self._dir(tenant, name).glob("v*.json"):
                if not _VERSION_RE.fullmatch(path.stem[1:]):
                    continue
                try:
                    versions[int(path.stem[1:])] = ModelRecord.from_json(path.read_bytes())
                except FileNotFoundError:  # deleted (by another worker) since the listing
                    continue
            if listed_at - stamp > _RACY_NS:
                self._cache[key] = (stamp, versions)
            else:
                self._cache.pop(key, None)
            return versions

    def resolve(self, tenant: str, ref: str) -> ModelRecord:
        name, version = parse_ref(ref)
        versions = self._versions(tenant, name)
        if version is None:
            if not versions:
                raise NotFound(f"model {name!r} not found")
            version = max(versions)
        record = versions.get(version)
        if record is None:
            raise NotFound(f"model {name}@{version} not found")
        return record

    def load(self, record: ModelRecord) -> bytes:
        """Decrypt a stored model (in memory only) and check its digest."""
        blob = (self._dir(record.tenant, record.name) / f"v{record.version}.onnx.enc").read_bytes()
        data = open_blob(
            self._storage_key(record.tenant),
            blob,
            self._aad(record.tenant, record.name, record.version),
            what=f"model {record.ref}",
        )
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise DecryptionError(f"stored model {record.ref} does not match its digest")
        return data

    def delete(self, tenant: str, ref: str) -> list[ModelRecord]:
        """Delete one version (``name@v``) or every version (``name``)."""
        name, version = parse_ref(ref)
        with self._lock:
            if version is None:
                records = [r for r in self.records(tenant) if r.name == name]
            else:
                records = [self.resolve(tenant, ref)]
            if not records:
                raise NotFound(f"model {name!r} not found")
            folder = self._dir(tenant, name)
            for r in records:
                os.replace(folder / f"v{r.version}.json", folder / f"v{r.version}.deleted")
                (folder / f"v{r.version}.onnx.enc").unlink(missing_ok=True)
            self._cache.pop((tenant, name), None)
            fsync_dir(folder)
            return records
