"""Dataset loading from uploaded bytes: formats, identification and one test per rejection."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.privacy import Dataset, DatasetFormat, DatasetLimits, load_dataset
from veil.sdk.errors import ConfigError, VeilError


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _parquet(columns: dict[str, list[object]]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


X = np.arange(24, dtype=np.float64).reshape(6, 4) / 10
Y = np.array([0, 1, 2, 0, 1, 2])


def test_npz_loads_and_is_named_by_sha256_of_bytes() -> None:
    data = _npz(x=X, y=Y)
    ds = load_dataset(data, "npz")
    assert ds.sha256 == hashlib.sha256(data).hexdigest()
    assert ds.features.dtype == np.float32 and ds.labels.dtype == np.int64
    assert ds.feature_shape == (4,) and ds.num_rows == 6 and ds.num_classes == 3
    np.testing.assert_allclose(ds.features, X.astype(np.float32))
    assert ds.format is DatasetFormat.NPZ


def test_npz_keeps_image_shape() -> None:
    ds = load_dataset(_npz(x=np.zeros((4, 1, 8, 8), np.float32), y=np.array([0, 1, 0, 1])), "npz")
    assert ds.feature_shape == (1, 8, 8)


def test_csv_without_header_uses_last_column() -> None:
    data = b"0.1,0.2,1\n0.3,0.4,0\n0.5,0.6,1\n"
    ds = load_dataset(data, DatasetFormat.CSV)
    assert ds.feature_shape == (2,)
    assert ds.labels.tolist() == [1, 0, 1]


def test_csv_with_named_label_column() -> None:
    data = b"label,a,b\n1,0.1,0.2\n0,0.3,0.4\n2,0.5,0.6\n"
    ds = load_dataset(data, "csv", label_column="label")
    assert ds.labels.tolist() == [1, 0, 2]
    np.testing.assert_allclose(ds.features[0], [0.1, 0.2])


def test_parquet_with_named_and_default_label() -> None:
    data = _parquet({"f1": [0.1, 0.2, 0.3], "y": [0, 1, 1], "f2": [1, 2, 3]})
    ds = load_dataset(data, "parquet", label_column="y")
    assert ds.labels.tolist() == [0, 1, 1]
    np.testing.assert_allclose(ds.features[:, 1], [1, 2, 3])
    ds2 = load_dataset(data, "parquet")
    assert ds2.labels.tolist() == [1, 2, 3] and ds2.num_classes == 4


@pytest.mark.parametrize(
    ("data", "fmt", "label_column", "match"),
    [
        (_npz(x=X), "npz", None, "lacks array"),
        (b"not a zip", "npz", None, "could not be read"),
        (_npz(x=X, y=Y[:5]), "npz", None, "6 feature rows but 5 labels"),
        (_npz(x=X, y=Y.astype(float)), "npz", None, "expected integer class ids"),
        (_npz(x=np.array(["a"] * 6).reshape(6, 1), y=Y), "npz", None, "expected a numeric"),
        (_npz(x=X[:, 0], y=Y), "npz", None, "expected \\(rows, features"),
        (_npz(x=X, y=Y.reshape(3, 2)), "npz", None, "one label per row"),
        (_npz(x=np.where(X > 1, np.nan, X), y=Y), "npz", None, "non-finite value"),
        (_npz(x=np.where(X > 1, np.inf, X), y=Y), "npz", None, "non-finite value"),
        (_npz(x=X, y=Y - 1), "npz", None, "is negative"),
        (_npz(x=X, y=np.zeros(6, int)), "npz", None, "single class"),
        (_npz(x=X, y=Y), "npz", "y", "label_column applies"),
        (b"", "npz", None, "empty"),
        (b"a,b\n1,x\n", "csv", None, "non-numeric"),
        (b"1,2,0\n3,1\n", "csv", None, "row 2 has 2 columns"),
        (b"1,2,0.5\n3,4,1\n", "csv", None, "non-integer"),
        (b"a,b\n1,0\n", "csv", "label", "not found"),
        (b"1,0\n2,1\n", "csv", "label", "no header row"),
        (b"1\n2\n", "csv", None, "need features and a label"),
        (b"a,b\n", "csv", None, "no data rows"),
        (b"\xff\xfe\x00", "csv", None, "not UTF-8"),
        (b"PAR1garbage", "parquet", None, "could not be read"),
        (_parquet({"a": ["x", "y"], "b": [0, 1]}), "parquet", None, "expected numeric"),
        (_parquet({"a": [1.0, None], "b": [0, 1]}), "parquet", None, "null value"),
        (_npz(x=X, y=Y), "xlsx", None, "unsupported dataset format"),
    ],
)
def test_rejections_name_the_problem(
    data: bytes, fmt: str, label_column: str | None, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        load_dataset(data, fmt, label_column=label_column)


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        (DatasetLimits(max_bytes=100), "bytes; the limit"),
        (DatasetLimits(max_rows=5), "6 rows; the limit is 5"),
        (DatasetLimits(min_rows=7), "at least 7"),
        (DatasetLimits(max_features=3), "4 features"),
        (DatasetLimits(max_classes=2), "3 classes; the limit is 2"),
    ],
)
def test_size_limits(limits: DatasetLimits, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_dataset(_npz(x=X, y=Y), "npz", limits=limits)


def test_dataset_is_frozen() -> None:
    ds = Dataset.from_arrays(X, Y, sha256="s")
    with pytest.raises(AttributeError):
        ds.num_classes = 9  # type: ignore[misc]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), fmt=st.sampled_from(["npz", "csv", "parquet"]))
def test_fuzzed_uploads_raise_only_veil_errors(data: bytes, fmt: str) -> None:
    try:
        ds = load_dataset(data, fmt)
    except VeilError:
        return
    assert ds.num_rows >= 2 and np.isfinite(ds.features).all()


def test_csv_line_endings_and_malformed_csv() -> None:
    # Old Mac line endings are rows, not a parser crash (found by the fuzz test above).
    ds = load_dataset(b"0.5,1\r0.25,0\r0.75,1\n", "csv")
    assert ds.num_rows == 3
    assert ds.features.ravel().tolist() == [0.5, 0.25, 0.75]
    assert ds.labels.tolist() == [1, 0, 1]
    with pytest.raises(ConfigError, match=r"csv dataset is malformed: field larger than field"):
        load_dataset(b'"' + b"1" * 200_000 + b'",0\n1,1\n', "csv")
