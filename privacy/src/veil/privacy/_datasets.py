"""Tabular and array datasets parsed from uploaded bytes into a validated, frozen ``Dataset``.

The enclave holds uploads decrypted in memory only, so every loader takes ``bytes`` and nothing
here touches the file system. A dataset is identified by the SHA-256 of the exact bytes uploaded.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import io
import math
import zipfile
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from veil.sdk.errors import ConfigError

__all__ = ["DEFAULT_FEATURE_RANGE", "Dataset", "DatasetFormat", "DatasetLimits", "load_dataset"]

DEFAULT_FEATURE_RANGE = (-1e9, 1e9)
"""The feature range a dataset gets when it declares none. Every squared activation norm the
clipper forms then stays far below float32's maximum (1e6 features of 1e9: 1e24 < 3.4e38)."""

_FLOAT32_MAX = float(np.finfo(np.float32).max)


class DatasetFormat(enum.Enum):
    """Container formats accepted for training data."""

    NPZ = "npz"
    CSV = "csv"
    PARQUET = "parquet"


@dataclass(frozen=True)
class DatasetLimits:
    """Upper bounds enforced on every upload (a tenant cannot exhaust enclave memory)."""

    max_bytes: int = 256 * 1024 * 1024
    max_rows: int = 2_000_000
    max_features: int = 1_000_000
    max_classes: int = 1000
    min_rows: int = 2


@dataclass(frozen=True, eq=False)
class Dataset:
    """A validated labelled dataset: ``features`` float32 ``(n, *feature_shape)``, ``labels`` int64.

    ``sha256`` is the hex digest of the uploaded bytes; it names the dataset in budget ledgers and
    training records. ``feature_range`` ``(low, high)`` is the declared range every feature lies
    in (checked at load; :data:`DEFAULT_FEATURE_RANGE` unless declared). It is public: it goes
    into the signed training record, so declare it from the data's schema, never from the data.
    """

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    num_classes: int
    sha256: str
    format: DatasetFormat
    feature_range: tuple[float, float] = DEFAULT_FEATURE_RANGE

    @property
    def num_rows(self) -> int:
        return int(self.labels.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.features.shape[1:])

    @classmethod
    def from_arrays(
        cls,
        x: npt.ArrayLike,
        y: npt.ArrayLike,
        *,
        sha256: str,
        fmt: DatasetFormat = DatasetFormat.NPZ,
        limits: DatasetLimits | None = None,
        feature_range: tuple[float, float] | None = None,
    ) -> Dataset:
        """Validate in-memory arrays (shapes, dtypes, finiteness, the feature range, labels
        0..k-1, limits)."""
        lim = limits or DatasetLimits()
        low_x, high_x = _check_range(feature_range)
        xa = np.asarray(x)
        ya = np.asarray(y)
        if xa.dtype.kind not in "biuf":
            raise ConfigError(f"dataset features have dtype {xa.dtype}; expected a numeric dtype")
        if ya.dtype.kind not in "iub":
            raise ConfigError(f"dataset labels have dtype {ya.dtype}; expected integer class ids")
        if xa.ndim < 2:
            raise ConfigError(
                f"dataset features have shape {xa.shape}; expected (rows, features...)"
            )
        if ya.ndim != 1:
            raise ConfigError(f"dataset labels have shape {ya.shape}; expected one label per row")
        n = int(xa.shape[0])
        if int(ya.shape[0]) != n:
            raise ConfigError(f"dataset has {n} feature rows but {ya.shape[0]} labels")
        if n < lim.min_rows:
            raise ConfigError(f"dataset has {n} rows; at least {lim.min_rows} are required")
        if n > lim.max_rows:
            raise ConfigError(f"dataset has {n} rows; the limit is {lim.max_rows}")
        per_row = math.prod(int(d) for d in xa.shape[1:])
        if per_row == 0 or per_row > lim.max_features:
            raise ConfigError(
                f"dataset rows have {per_row} features; expected 1..{lim.max_features}"
            )
        xf = xa.astype(np.float32, copy=False)
        if not np.isfinite(xf).all():
            bad = int(np.argwhere(~np.isfinite(xf).reshape(n, -1).all(axis=1))[0][0])
            raise ConfigError(f"dataset features contain a non-finite value (first in row {bad})")
        outside = (xf < low_x) | (xf > high_x)
        if outside.any():
            row, col = (int(i) for i in np.argwhere(outside.reshape(n, -1))[0])
            value = float(xf.reshape(n, -1)[row, col])
            raise ConfigError(
                f"dataset feature {value:.6g} (row {row}, feature {col}) lies outside the feature "
                f"range [{low_x:.6g}, {high_x:.6g}]; rescale the data or declare a wider "
                "feature_range"
            )
        yl = ya.astype(np.int64, copy=False)
        low, high = int(yl.min()), int(yl.max())
        if low < 0:
            raise ConfigError(f"dataset label {low} is negative; labels must be 0..k-1")
        num_classes = high + 1
        if num_classes > lim.max_classes:
            raise ConfigError(f"dataset has {num_classes} classes; the limit is {lim.max_classes}")
        if len(np.unique(yl)) < 2:
            raise ConfigError("dataset labels hold a single class; at least two are required")
        return cls(
            features=np.ascontiguousarray(xf),
            labels=np.ascontiguousarray(yl),
            num_classes=num_classes,
            sha256=sha256,
            format=fmt,
            feature_range=(low_x, high_x),
        )


def _check_range(feature_range: tuple[float, float] | None) -> tuple[float, float]:
    """A declared feature range: two finite float32 numbers, low < high."""
    if feature_range is None:
        return DEFAULT_FEATURE_RANGE
    try:
        low, high = feature_range
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"feature_range must be (low, high), got {feature_range!r}") from exc
    for v in (low, high):
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(f"feature_range bounds must be numbers, got {v!r}")
    lo, hi = float(low), float(high)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"feature_range [{lo}, {hi}] must be finite with low < high")
    if max(abs(lo), abs(hi)) > _FLOAT32_MAX:
        raise ConfigError(f"feature_range [{lo:.6g}, {hi:.6g}] exceeds float32's range")
    return lo, hi


def load_dataset(
    data: bytes,
    fmt: DatasetFormat | str,
    *,
    label_column: str | None = None,
    limits: DatasetLimits | None = None,
    feature_range: tuple[float, float] | None = None,
) -> Dataset:
    """Parse an uploaded dataset from ``data`` (never from disk) and validate it.

    ``npz`` holds arrays ``x`` and ``y``; ``csv`` and ``parquet`` hold a table whose label is
    ``label_column`` (needs a header) or else the last column; every other column is a feature.
    Every feature must lie in ``feature_range`` (default :data:`DEFAULT_FEATURE_RANGE`).
    Raises ``ConfigError`` with a one-line reason on any malformed or out-of-limit upload.
    """
    lim = limits or DatasetLimits()
    rng = _check_range(feature_range)
    try:
        kind = DatasetFormat(fmt) if isinstance(fmt, str) else fmt
    except ValueError as exc:
        raise ConfigError(f"unsupported dataset format {fmt!r}; use npz, csv or parquet") from exc
    if len(data) > lim.max_bytes:
        raise ConfigError(f"dataset is {len(data)} bytes; the limit is {lim.max_bytes}")
    if not data:
        raise ConfigError("dataset upload is empty")
    digest = hashlib.sha256(data).hexdigest()
    if kind is DatasetFormat.NPZ:
        if label_column is not None:
            raise ConfigError("label_column applies to csv and parquet; npz uses arrays x and y")
        x, y = _read_npz(data)
    elif kind is DatasetFormat.CSV:
        x, y = _read_csv(data, label_column)
    else:
        x, y = _read_parquet(data, label_column)
    return Dataset.from_arrays(x, y, sha256=digest, fmt=kind, limits=lim, feature_range=rng)


_Arrays = tuple[npt.NDArray[np.generic], npt.NDArray[np.generic]]


def _read_npz(data: bytes) -> _Arrays:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            names = set(archive.files)
            missing = {"x", "y"} - names
            if missing:
                raise ConfigError(
                    f"npz dataset lacks array(s) {sorted(missing)}; found {sorted(names)}"
                )
            return archive["x"], archive["y"]
    except ConfigError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ConfigError(f"npz dataset could not be read: {exc}") from exc


def _integral_labels(values: npt.NDArray[np.float64], where: str) -> npt.NDArray[np.int64]:
    if not np.isfinite(values).all() or not np.all(values == np.round(values)):
        raise ConfigError(f"{where} label column holds non-integer values; labels must be 0..k-1")
    return values.astype(np.int64)


def _label_index(header: list[str] | None, label_column: str | None, width: int) -> int:
    if label_column is None:
        return width - 1
    if header is None:
        raise ConfigError(f"label column {label_column!r} named but the table has no header row")
    if label_column not in header:
        raise ConfigError(f"label column {label_column!r} not found; columns are {header}")
    return header.index(label_column)


def _read_csv(data: bytes, label_column: str | None) -> _Arrays:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"csv dataset is not UTF-8 text: {exc.reason}") from exc
    try:
        # newline="": the csv module handles \r, \n and \r\n itself (RFC 4180).
        reader = csv.reader(io.StringIO(text, newline=""))
        rows = [r for r in reader if r and any(c.strip() for c in r)]
    except csv.Error as exc:
        raise ConfigError(f"csv dataset is malformed: {exc}") from exc
    if not rows:
        raise ConfigError("csv dataset has no rows")
    header: list[str] | None = None
    try:
        [float(c) for c in rows[0]]
    except ValueError:
        header = [c.strip() for c in rows[0]]
        rows = rows[1:]
    width = len(header) if header is not None else len(rows[0]) if rows else 0
    if width < 2:
        raise ConfigError(f"csv dataset has {width} column(s); need features and a label")
    for i, r in enumerate(rows):
        if len(r) != width:
            line = i + 1 + (header is not None)
            raise ConfigError(f"csv row {line} has {len(r)} columns; expected {width}")
    if not rows:
        raise ConfigError("csv dataset has a header but no data rows")
    try:
        table = np.array([[float(c) for c in r] for r in rows], dtype=np.float64)
    except ValueError as exc:
        raise ConfigError(f"csv dataset holds a non-numeric cell: {exc}") from exc
    li = _label_index(header, label_column, width)
    y = _integral_labels(table[:, li], "csv")
    return np.delete(table, li, axis=1), y


def _read_parquet(data: bytes, label_column: str | None) -> _Arrays:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError("parquet datasets need the 'pyarrow' package in the enclave") from exc
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(f"parquet dataset could not be read: {exc}") from exc
    names = [str(n) for n in table.column_names]
    if len(names) < 2:
        raise ConfigError(f"parquet dataset has {len(names)} column(s); need features and a label")
    cols: list[npt.NDArray[np.float64]] = []
    for name, column in zip(names, table.columns, strict=True):
        if not (
            pa.types.is_integer(column.type)
            or pa.types.is_floating(column.type)
            or pa.types.is_boolean(column.type)
        ):
            raise ConfigError(f"parquet column {name!r} has type {column.type}; expected numeric")
        if column.null_count:
            raise ConfigError(f"parquet column {name!r} holds {column.null_count} null value(s)")
        cols.append(np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64))
    li = _label_index(names, label_column, len(names))
    y = _integral_labels(cols[li], "parquet")
    x = np.stack([c for i, c in enumerate(cols) if i != li], axis=1)
    return x, y
