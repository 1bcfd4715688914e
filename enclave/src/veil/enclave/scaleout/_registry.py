"""The model registry of a replicated deployment: metadata in PostgreSQL, blobs on a volume.

Same API as ``ModelStore`` (it is one), with the registry moved into the shared database:

- a version is allocated under a per-(tenant, name) transaction lock and its row inserted only
  after its encrypted blob is durable on the shared volume, in the same transaction: two
  replicas registering the same name at once get two versions, never one twice, and a version
  exists only once its row does;
- a delete marks the rows (tombstones: a version number is never reused) and then removes the
  blobs; every replica resolves against the table on each call, so a model registered or
  deleted through one replica is seen by all at once.

The table holds what the one-machine ``v<N>.json`` holds: tenant, model name, version, the
model's SHA-256, size, creation time and tensor signatures: metadata, never the model.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from veil.enclave._at_rest import seal_blob
from veil.enclave._disk import disk_full_is_storage_full, ensure_space
from veil.enclave._errors import NotFound
from veil.enclave._files import write_atomic
from veil.enclave._onnx import ValidatedModel
from veil.enclave._store import ModelRecord, ModelStore, parse_ref
from veil.enclave.scaleout._pg import PostgresPool

__all__ = ["PostgresModelStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS veil_models (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    record TEXT NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (tenant, name, version)
)
"""


class PostgresModelStore(ModelStore):
    """``ModelStore`` whose registry is a PostgreSQL table shared by the replicas."""

    def __init__(
        self,
        root: Path,
        pool: PostgresPool,
        *,
        storage_key: Callable[[str], bytes],
        clock: Callable[[], datetime],
        headroom: int = 0,
    ) -> None:
        # No sweep of blobs without metadata: another replica's upload may be in flight.
        super().__init__(root, storage_key=storage_key, clock=clock, headroom=headroom, sweep=False)
        self._pool = pool
        pool.migrate(_SCHEMA)

    def register(
        self, tenant: str, name: str, data: bytes, validated: ValidatedModel
    ) -> ModelRecord:
        parse_ref(name)
        folder = self._dir(tenant, name)
        with disk_full_is_storage_full("the model"):
            folder.mkdir(parents=True, exist_ok=True)
        with self._pool.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{tenant}/{name}",))
            row = conn.execute(
                "SELECT coalesce(max(version), 0) FROM veil_models WHERE tenant=%s AND name=%s",
                (tenant, name),
            ).fetchone()
            version = int(str(row[0])) + 1 if row else 1
            record = ModelRecord.upload(tenant, name, version, data, validated, self._clock())
            blob = seal_blob(self._storage_key(tenant), data, self._aad(tenant, name, version))
            ensure_space(folder, len(blob), headroom=self._headroom)
            blob_path = folder / f"v{version}.onnx.enc"
            try:
                with disk_full_is_storage_full("the model"):
                    write_atomic(blob_path, blob)
                conn.execute(
                    "INSERT INTO veil_models (tenant, name, version, record) "
                    "VALUES (%s, %s, %s, %s)",
                    (tenant, name, version, record.to_json().decode()),
                )
            except BaseException:  # no row: the version stays free, its blob goes
                blob_path.unlink(missing_ok=True)
                raise
        return record

    def records(self, tenant: str) -> list[ModelRecord]:
        with self._pool.transaction() as conn:
            rows = conn.execute(
                "SELECT record FROM veil_models WHERE tenant=%s AND NOT deleted "
                "ORDER BY name, version",
                (tenant,),
            ).fetchall()
        return [ModelRecord.from_json(str(r[0]).encode()) for r in rows]

    def _versions(self, tenant: str, name: str) -> dict[int, ModelRecord]:
        with self._pool.transaction() as conn:
            rows = conn.execute(
                "SELECT version, record FROM veil_models "
                "WHERE tenant=%s AND name=%s AND NOT deleted",
                (tenant, name),
            ).fetchall()
        return {int(str(v)): ModelRecord.from_json(str(r).encode()) for v, r in rows}

    def delete(self, tenant: str, ref: str) -> list[ModelRecord]:
        name, version = parse_ref(ref)
        with self._pool.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{tenant}/{name}",))
            if version is None:
                rows = conn.execute(
                    "UPDATE veil_models SET deleted = TRUE WHERE tenant=%s AND name=%s "
                    "AND NOT deleted RETURNING record",
                    (tenant, name),
                ).fetchall()
            else:
                rows = conn.execute(
                    "UPDATE veil_models SET deleted = TRUE WHERE tenant=%s AND name=%s "
                    "AND version=%s AND NOT deleted RETURNING record",
                    (tenant, name, version),
                ).fetchall()
            if not rows:
                shown = name if version is None else f"{name}@{version}"
                raise NotFound(f"model {shown!r} not found")
        records = sorted(
            (ModelRecord.from_json(str(r[0]).encode()) for r in rows), key=lambda r: r.version
        )
        folder = self._dir(tenant, name)
        for r in records:  # after the commit: a blob goes only once no replica resolves it
            (folder / f"v{r.version}.onnx.enc").unlink(missing_ok=True)
        return records
