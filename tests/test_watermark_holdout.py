"""Embedding measures the owner's held-out rows and reports the cost in the signed claim."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.sdk.errors import WatermarkError
from veil.watermark import WatermarkClaim, WatermarkKey, embed_onnx, onnx_predictor, verify
from veil.watermark._claim import EmbeddingReport
from veil.watermark._models import SmallMLP, load_digits, to_onnx, train

NOW = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)
OWNER = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
KEY = WatermarkKey(bytes([8]) * 32, bytes([9]) * 32)


@pytest.fixture(scope="module")
def model() -> tuple[bytes, np.ndarray, np.ndarray]:
    torch.set_num_threads(1)
    data = load_digits()
    torch.manual_seed(11)
    net = train(SmallMLP(), data.x_train, data.y_train, epochs=10)
    return to_onnx(net), data.x_train, data.y_train


def _held_out_correct(model: bytes, x: np.ndarray, y: np.ndarray, n_hold: int) -> int:
    # the split embed_onnx draws with seed 0
    split = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).numpy()[:n_hold]
    return int(np.sum(onnx_predictor(model)(x[split]).argmax(axis=1) == y[split]))


def test_claim_reports_the_held_out_counts(model: tuple[bytes, np.ndarray, np.ndarray]) -> None:
    original, x, y = model
    result = embed_onnx(original, owner_key=OWNER, key=KEY, x=x, y=y, now=NOW, epochs=6)
    report = result.claim.embedding
    assert report is not None
    assert report.holdout_rows == round(0.2 * len(x))
    # the "before" count is the unmarked model's, measured on exactly those rows
    assert report.correct_before == _held_out_correct(original, x, y, report.holdout_rows)
    assert report.drop_points == pytest.approx(
        100 * (report.correct_before - report.correct_after) / report.holdout_rows
    )
    # the report is signed: it survives a round trip, and editing it breaks the signature
    parsed = WatermarkClaim.from_json(result.claim.to_json())
    assert parsed.embedding == report
    assert verify(result.model, parsed, KEY).detected
    data = json.loads(result.claim.to_json())
    data["embedding"]["correct_after"] = (report.correct_after + 1) % (report.holdout_rows + 1)
    with pytest.raises(WatermarkError, match="signature"):
        WatermarkClaim.from_json(json.dumps(data))


def test_holdout_zero_trains_on_every_row_and_reports_nothing(
    model: tuple[bytes, np.ndarray, np.ndarray],
) -> None:
    original, x, y = model
    result = embed_onnx(original, owner_key=OWNER, key=KEY, x=x, y=y, now=NOW, epochs=4,
                        holdout=0.0)  # fmt: skip
    assert result.claim.embedding is None
    assert "embedding" not in json.loads(result.claim.to_json())
    assert result.verdict.detected


@pytest.mark.parametrize("holdout", [-0.1, 1.0, 0.0001])
def test_bad_holdout_is_refused(
    model: tuple[bytes, np.ndarray, np.ndarray], holdout: float
) -> None:
    original, x, y = model
    with pytest.raises(WatermarkError, match="hold"):
        embed_onnx(original, owner_key=OWNER, key=KEY, x=x[:100], y=y[:100], now=NOW,
                   epochs=1, holdout=holdout)  # fmt: skip


def test_negative_max_drop_is_refused(model: tuple[bytes, np.ndarray, np.ndarray]) -> None:
    original, x, y = model
    with pytest.raises(WatermarkError, match="max_drop"):
        embed_onnx(original, owner_key=OWNER, key=KEY, x=x, y=y, now=NOW, max_drop=-1)


@pytest.mark.parametrize(
    "raw",
    [
        {"holdout_rows": 0, "correct_before": 0, "correct_after": 0},
        {"holdout_rows": 10, "correct_before": 11, "correct_after": 0},
        {"holdout_rows": 10, "correct_before": 5, "correct_after": -1},
        {"holdout_rows": 10, "correct_before": 5.0, "correct_after": 5},
        {"holdout_rows": 10, "correct_before": 5},
        [10, 5, 5],
    ],
)
def test_malformed_embedding_report_is_refused(raw: object) -> None:
    with pytest.raises(WatermarkError):
        EmbeddingReport.from_dict(raw)


def test_explicit_held_out_rows_are_measured(model: tuple[bytes, np.ndarray, np.ndarray]) -> None:
    original, x, y = model
    fresh = load_digits()
    hx, hy = fresh.x_fresh, fresh.y_fresh
    result = embed_onnx(original, owner_key=OWNER, key=KEY, x=x, y=y, now=NOW, epochs=4,
                        holdout_data=(hx, hy))  # fmt: skip
    report = result.claim.embedding
    assert report is not None and report.holdout_rows == len(hx)
    predict = onnx_predictor(original)
    assert report.correct_before == int(np.sum(predict(hx).argmax(axis=1) == hy))
    # with rows the owner names, the report is exact for the released model
    released = onnx_predictor(result.model)
    assert report.correct_after == int(np.sum(released(hx).argmax(axis=1) == hy))


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (lambda x, y: (x[:0], y[:0]), "held-out data has 0 inputs"),
        (lambda x, y: (x[:10], y[:9]), "held-out data has 10 inputs and 9 labels"),
        (lambda x, y: (x[:10, :32], y[:10]), "held-out inputs have shape"),
        (lambda x, y: (x[:10], y[:10] + 10), "held-out labels fall outside"),
    ],
)
def test_malformed_held_out_rows_are_refused(
    model: tuple[bytes, np.ndarray, np.ndarray], rows: Any, match: str
) -> None:
    original, x, y = model
    with pytest.raises(WatermarkError, match=match):
        embed_onnx(original, owner_key=OWNER, key=KEY, x=x, y=y, now=NOW, epochs=1,
                   holdout_data=rows(x, y))  # fmt: skip
