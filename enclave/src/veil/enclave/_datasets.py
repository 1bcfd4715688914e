"""Per-tenant training datasets, encrypted at rest and named by the SHA-256 of their bytes.

Layout under ``DATA_DIR/datasets/<tenant>/``: ``<sha256>.enc`` (AES-256-GCM under the tenant's
dataset key, AAD = tenant/digest) and ``<sha256>.json`` (format, shape, classes: no content).
The metadata is written last: a dataset exists only once it is there. Blobs without metadata are
removed when the store opens; ``write_atomic`` temporaries (``.<sha256>.enc.*.tmp``) left by a
crash are removed at enclave start (``veil.enclave._files.remove_temp_files``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from veil.enclave._at_rest import open_blob, seal_blob
from veil.enclave._disk import disk_full_is_storage_full, ensure_space
from veil.enclave._errors import InvalidInput, NotFound
from veil.enclave._files import write_atomic
from veil.sdk.errors import DecryptionError

__all__ = ["DatasetRecord", "DatasetStore", "remove_orphan_blobs"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class DatasetRecord:
    tenant: str
    sha256: str
    format: str
    label_column: str
    rows: int
    feature_shape: tuple[int, ...]
    num_classes: int
    size: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> DatasetRecord:
        doc = json.loads(raw)
        doc["feature_shape"] = tuple(doc["feature_shape"])
        return cls(**doc)


def remove_orphan_blobs(root: Path) -> int:
    """Remove blobs whose metadata never landed (an upload interrupted by a crash).

    Run once at enclave start, before any call is served (never while an upload may be in
    flight: with ``[server] workers = N`` another worker's blob is written before its metadata).
    """
    removed = 0
    for blob in root.glob("*/*.enc"):
        if not blob.with_suffix(".json").exists():
            blob.unlink(missing_ok=True)
            removed += 1
    return removed


class DatasetStore:
    def __init__(
        self, root: Path, *, storage_key: Callable[[str], bytes], headroom: int = 0
    ) -> None:
        self._root = root
        self._storage_key = storage_key
        self._headroom = headroom
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _aad(tenant: str, digest: str) -> bytes:
        return f"veil/v1/dataset-at-rest\0{tenant}\0{digest}".encode()

    def put(self, record: DatasetRecord, data: bytes) -> DatasetRecord:
        """Store a validated dataset (idempotent: the same bytes give the same name)."""
        if hashlib.sha256(data).hexdigest() != record.sha256:
            raise InvalidInput("dataset does not match its digest")
        folder = self._root / record.tenant
        blob_path, meta_path = folder / f"{record.sha256}.enc", folder / f"{record.sha256}.json"
        with self._lock:
            blob = seal_blob(
                self._storage_key(record.tenant), data, self._aad(record.tenant, record.sha256)
            )
            meta = record.to_json()
            ensure_space(folder, len(blob) + len(meta), headroom=self._headroom)
            # The same bytes stored before stay valid whatever happens: a rewritten blob holds
            # the same plaintext. Only what this call created is removed if it fails.
            existed = meta_path.exists()
            try:
                with disk_full_is_storage_full("the dataset"):
                    write_atomic(blob_path, blob)
                    write_atomic(meta_path, meta)
            except BaseException:
                if not existed:
                    meta_path.unlink(missing_ok=True)
                    blob_path.unlink(missing_ok=True)
                raise
        return record

    def get(self, tenant: str, digest: str) -> tuple[DatasetRecord, bytes]:
        """The dataset's metadata and bytes (decrypted in memory only)."""
        if not _DIGEST.match(digest):
            raise InvalidInput(f"dataset id {digest!r} is not a hex SHA-256")
        folder = self._root / tenant
        try:
            record = DatasetRecord.from_json((folder / f"{digest}.json").read_bytes())
            blob = (folder / f"{digest}.enc").read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"dataset {digest[:16]}… not found") from exc
        data = open_blob(self._storage_key(tenant), blob, self._aad(tenant, digest), what="dataset")
        if hashlib.sha256(data).hexdigest() != digest:
            raise DecryptionError("stored dataset does not match its digest")
        return record, data
