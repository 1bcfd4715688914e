"""Watermarking registered models inside the running enclave, and checking marks there."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from enclave_support import Served

from veil.sdk import RemoteError
from veil.sdk.audit import AuditRecord, EventType
from veil.watermark import WatermarkClaim, WatermarkKey, verify
from veil.watermark._models import SmallMLP, load_digits, to_onnx, train

warnings.filterwarnings("ignore", message="trusting a test root")


@pytest.fixture(scope="module")
def mlp_and_data() -> tuple[bytes, bytes]:
    torch.set_num_threads(1)
    data = load_digits()
    torch.manual_seed(0)
    model = to_onnx(train(SmallMLP(), data.x_train, data.y_train, epochs=8))
    buf = io.BytesIO()
    np.savez(buf, x=data.x_train, y=data.y_train)
    return model, buf.getvalue()


def _key_file(seed: int) -> dict[str, object]:
    return {
        "version": "veil-wm-key-v1",
        "owner_private_key": (bytes([seed]) * 32).hex(),
        "watermark": WatermarkKey(bytes([seed + 1]) * 32, bytes([seed + 2]) * 32).to_dict(),
    }


def test_embed_registers_a_marked_version_and_verify_detects_it(
    served: Served, mlp_and_data: tuple[bytes, bytes]
) -> None:
    model, data = mlp_and_data
    key = _key_file(7)
    with served.client() as client:
        client.upload_model(model, "scorer")
        dataset = client.upload_dataset(data, format="npz")
        marked = client.embed_watermark("scorer", key, dataset, epochs=10)
        assert marked.model.ref == "scorer@2"
        assert marked.p_value < 1e-9 and marked.matches == marked.n_bits
        check = client.verify_watermark(
            "scorer@2", marked.claim_json, {"watermark": key["watermark"]}
        )
        assert check.detected and check.p_value < 1e-9
        assert check.model_sha256 == marked.model.sha256
        clean = client.verify_watermark(
            "scorer@1", marked.claim_json, {"watermark": key["watermark"]}
        )
        assert not clean.detected and clean.p_value > 1e-6
        with pytest.raises(RemoteError) as err:
            client.verify_watermark(
                "scorer@2", marked.claim_json, {"watermark": _key_file(9)["watermark"]}
            )
        assert err.value.code == "INVALID_ARGUMENT"
    # The claim verifies offline with the watermark library alone, on the enclave's model bytes.
    claim = WatermarkClaim.from_json(marked.claim_json)
    stored = served.enclave.store.load(served.enclave.store.resolve("default", "scorer@2"))
    assert verify(stored, claim, WatermarkKey.from_dict(key["watermark"])).detected
    records = [
        AuditRecord.from_line(x)
        for x in (served.data_dir / "audit/default/entries.jsonl").read_bytes().splitlines()
    ]
    embedded = next(r for r in records if r.event is EventType.WATERMARK_EMBEDDED)
    assert embedded.details["commitment"] == claim.commitment.hex()
    assert embedded.resource == "scorer@2"
    raw = (served.data_dir / "audit/default/entries.jsonl").read_bytes()
    assert str(key["owner_private_key"]).encode() not in raw


def test_embed_with_bad_inputs_is_refused_and_stores_nothing(
    served: Served, mlp_and_data: tuple[bytes, bytes]
) -> None:
    model, data = mlp_and_data
    with served.client() as client:
        client.upload_model(model, "scorer")
        dataset = client.upload_dataset(data, format="npz")
        bad_key = dict(_key_file(3), owner_private_key="00" * 5)
        with pytest.raises(RemoteError) as err:
            client.embed_watermark("scorer", bad_key, dataset)
        assert (err.value.code, err.value.detail) == (
            "INVALID_ARGUMENT",
            "owner_private_key must be a 32-byte Ed25519 seed",
        )
        with pytest.raises(RemoteError) as err:
            client.embed_watermark("missing", _key_file(3), dataset)
        assert err.value.code == "NOT_FOUND"
        assert [m.ref for m in client.list_models()] == ["scorer@1"]
    served.assert_healthy()
