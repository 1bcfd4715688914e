"""The Python examples in docs/ run, so a doc that drifts from the code fails CI.

Every ```python block of docs/PRIVACY.md and docs/WATERMARK.md (```python no-run blocks are
shown only) runs in a fresh namespace, in a temporary working directory, after a prelude that
defines what the surrounding prose says the reader already has (a dataset, a key, a live
enclave). The preludes live here, by block, so the docs stay what a user reads. A block that
is added without a prelude fails the count check below.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from enclave_support import TENANT_KEYS, Served
from sklearn.datasets import load_digits

from veil.sdk import InsecureModeWarning

DOCS = Path(__file__).resolve().parents[1] / "docs"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def python_blocks(name: str) -> list[str]:
    return _BLOCK.findall((DOCS / name).read_text())


def _digits_npz(path: Path, rows: int = 400, *, images: bool = False) -> None:
    digits = load_digits()
    x = (digits.data[:rows] / 16.0).astype(np.float32)
    np.savez(path, x=x.reshape(-1, 1, 8, 8) if images else x, y=digits.target[:rows])


@pytest.fixture
def in_tmp(tmp_path: Path) -> Iterator[Path]:
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureModeWarning)
            yield tmp_path
    finally:
        os.chdir(cwd)


def _enclave(served: Served) -> dict[str, Any]:
    return {"target": served.address, "key": TENANT_KEYS["default"], "policy": served.policy()}


# -- docs/PRIVACY.md ----------------------------------------------------------------------------


def _privacy_client(served: Served, tmp: Path) -> dict[str, Any]:
    _digits_npz(tmp / "train.npz", images=True)
    return _enclave(served)


def _privacy_library(served: Served, tmp: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).round(3)
    lines = ["a,b,c,d,label", *(",".join(map(str, r)) + f",{int(r[0] > 0)}" for r in x)]
    return {
        "upload_bytes": "\n".join(lines).encode(),
        "model_toml": '[model]\nkind = "mlp"\ninput_shape = [4]\nnum_classes = 2\nhidden = [8]\n',
        "training_toml": "[training]\nepochs = 1\nbatch_size = 50\ntarget_epsilon = 2.0\n",
        "tenant_id": "acme",
        "job_id": "job-1",
        "on_progress": lambda event: None,
        "data_dir": tmp,
    }


def _privacy_auditor(served: Served, tmp: Path) -> dict[str, Any]:
    import torch

    rng = np.random.default_rng(1)
    return {
        "x": torch.from_numpy(rng.normal(size=(16, 64)).astype(np.float32)),
        "y": torch.from_numpy(rng.integers(0, 10, size=16).astype(np.int64)),
    }


# -- docs/WATERMARK.md --------------------------------------------------------------------------


def _watermark_python(served: Served, tmp: Path) -> dict[str, Any]:
    import torch

    from veil.watermark._models import SmallMLP, to_onnx, train
    from veil.watermark._models import load_digits as digits

    data = digits()
    torch.manual_seed(0)
    model = train(SmallMLP(), data.x_train, data.y_train, epochs=30)
    (tmp / "model.onnx").write_bytes(to_onnx(model))
    # the owner's rows to fine-tune on (a third of them: the block embeds with the defaults)
    np.savez(tmp / "owner_data.npz", x=data.x_train[:300], y=data.y_train[:300])
    return {}


def _owner_and_key() -> dict[str, Any]:
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from veil.watermark import WatermarkKey

    return {
        "owner": Ed25519PrivateKey.from_private_bytes(bytes([21]) * 32),
        "key": WatermarkKey(bytes([22]) * 32, bytes([23]) * 32),
        "now": datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC),
    }


def _watermark_dp(served: Served, tmp: Path) -> dict[str, Any]:
    from veil.privacy import Dataset, ModelSpec, NoiseMode, TrainingConfig, build_model
    from veil.watermark import LayerLocator, WatermarkPlan, WatermarkRegularizer, verify
    from veil.watermark._claim import public_key_bytes

    names = _owner_and_key()
    digits = load_digits()
    rows = (digits.data[:1000] / 16.0).astype(np.float32)
    owner_key = public_key_bytes(names["owner"].public_key())
    return {
        **names,
        "WatermarkRegularizer": WatermarkRegularizer,
        "build_model": build_model,
        "verify": verify,
        "spec": ModelSpec("mlp", (64,), 10, hidden=(64,)),
        "config": TrainingConfig(
            epochs=3, batch_size=50, noise_multiplier=1.0, noise=NoiseMode.FAST, seed=5
        ),
        "dataset": Dataset.from_arrays(rows, digits.target[:1000], sha256="44" * 32),
        "plan": WatermarkPlan(
            names["key"], owner_key, LayerLocator("dense", (64, 64), 0), n_bits=64
        ),
    }


def _watermark_by_hand(served: Served, tmp: Path) -> dict[str, Any]:
    return _owner_and_key()


def _watermark_enclave(served: Served, tmp: Path) -> dict[str, Any]:
    from veil.watermark import WatermarkKey
    from veil.watermark._models import SmallMLP, to_onnx

    _digits_npz(tmp / "owner-data.npz", rows=300)
    secret = WatermarkKey.generate()
    key_file = {
        "version": "veil-wm-key-v1",
        "owner_private_key": (bytes([31]) * 32).hex(),
        "watermark": secret.to_dict(),
    }
    (tmp / "KEY.json").write_text(json.dumps(key_file))
    (tmp / "OPENING.json").write_text(json.dumps(secret.to_dict()))
    with served.client() as client:
        client.upload_model(to_onnx(SmallMLP()), "scorer")
    return _enclave(served)


Prelude = Callable[[Served, Path], dict[str, Any]]
PRELUDES: dict[str, list[Prelude]] = {
    "PRIVACY.md": [_privacy_client, _privacy_library, _privacy_auditor],
    "WATERMARK.md": [_watermark_python, _watermark_dp, _watermark_by_hand, _watermark_enclave],
}
CASES = [(doc, i) for doc, preludes in PRELUDES.items() for i in range(len(preludes))]


@pytest.mark.parametrize("doc", sorted(PRELUDES))
def test_every_python_block_has_a_prelude(doc: str) -> None:
    assert len(python_blocks(doc)) == len(PRELUDES[doc])


@pytest.mark.parametrize(("doc", "index"), CASES, ids=[f"{d}-{i + 1}" for d, i in CASES])
def test_docs_python_block_runs(served: Served, in_tmp: Path, doc: str, index: int) -> None:
    source = python_blocks(doc)[index]
    namespace = {"__name__": "__doc_example__", **PRELUDES[doc][index](served, in_tmp)}
    with redirect_stdout(io.StringIO()):
        exec(compile(source, f"docs/{doc} python block {index + 1}", "exec"), namespace)
    for name in re.findall(r"^(\w+) = ", source, re.M):  # what the block says it makes exists
        assert namespace.get(name) is not None, name
