"""Python and Node clients on one enclave: Python uploads and Node infers, and vice versa.

Runs the Node client (``node/dist/test/cross.js``, built by ``make test``'s Node step) against the
real server this test starts, with both sealing suites; the Node client verifies attestation and
every receipt itself, and the Python client then checks the model Node uploaded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from enclave_support import TENANT_KEYS, Served, mlp_model

REPO = Path(__file__).resolve().parents[1]
NODE_DIR = REPO / "node"
CROSS = NODE_DIR / "dist" / "test" / "cross.js"

warnings.filterwarnings("ignore", message="trusting a test root")


@pytest.fixture(scope="module")
def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.skip("Node.js is not installed (the Node client needs Node 20+)")
    if not CROSS.exists():
        if not (NODE_DIR / "node_modules").is_dir():
            pytest.skip("node/node_modules is missing: run `make test` (npm ci) first")
        subprocess.run(["npm", "run", "build"], cwd=NODE_DIR, check=True, capture_output=True)
    return exe


@pytest.mark.parametrize("suite", [1, 2])
def test_python_uploads_node_infers_and_back(
    served: Served, node: str, tmp_path: Path, suite: int
) -> None:
    root = tmp_path / "root.pem"
    root.write_bytes(served.root_pem)
    node_model = tmp_path / "node.onnx"
    node_model.write_bytes(mlp_model(seed=5))
    x = np.array([[0.5, -1, 2, 0.25]], dtype=np.float32)
    with served.client() as client:
        uploaded = client.upload_model(mlp_model(seed=3), "from-python")
        expected = client.infer("from-python", {"x": x})
    result = subprocess.run(
        [
            node,
            str(CROSS),
            served.address,
            str(root),
            TENANT_KEYS["default"],
            str(suite),
            uploaded.ref,
            str(node_model),
            "from-node",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for name, array in expected.items():
        got = report["outputs"][name]
        assert got["shape"] == list(array.shape)
        np.testing.assert_allclose(np.array(got["values"]).reshape(array.shape), array, rtol=1e-6)
    assert len(report["receipts"]) == 2  # inference and upload, both verified by Node on arrival
    with served.client() as client:
        models = {m.ref: m for m in client.list_models()}
        assert report["uploaded"] in models
        assert models[report["uploaded"]].sha256 == report["sha256"]
        out = client.infer(report["uploaded"], {"x": x})
    assert out["probs"].shape == (1, 3)
    assert not np.allclose(out["probs"], expected["probs"])  # Node's model, not Python's
    np.testing.assert_allclose(out["probs"].sum(axis=-1), 1.0, rtol=1e-5)
