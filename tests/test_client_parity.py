"""``Client`` and ``AsyncClient`` are twins: the same public methods and signatures, driven by
the same operations — and the async suite mirrors the sync one against a real enclave.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from enclave_support import TENANT_KEYS, Served, mlp_model

from veil.sdk import (
    AsyncClient,
    AsyncTrainingJob,
    Client,
    PrivacyBudgetExceeded,
    RemoteError,
    RemoteReason,
    TrainingJob,
    TrainingOutcome,
    TrainingProgress,
)
from veil.sdk._audit_client import attestation_check
from veil.sdk.audit import EventType, verify_export
from veil.watermark import WatermarkKey
from veil.watermark._models import load_digits

X = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
ASYNC_NAMES = {"TrainingJob": "AsyncTrainingJob"}
CONTEXT = {"__enter__", "__exit__", "__aenter__", "__aexit__"}


def _public(cls: type) -> dict[str, Any]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") or name in CONTEXT
    }


def _shape(fn: Callable[..., Any]) -> tuple[list[tuple[str, Any, str, object]], str]:
    sig = inspect.signature(fn)
    params = [(p.name, p.kind, str(p.annotation), p.default) for p in sig.parameters.values()]
    return params, str(sig.return_annotation)


@pytest.mark.parametrize(
    ("sync", "asynchronous"), [(Client, AsyncClient), (TrainingJob, AsyncTrainingJob)]
)
def test_twins_have_the_same_public_methods_and_signatures(sync: type, asynchronous: type) -> None:
    plain = _public(sync)
    awaited = _public(asynchronous)
    rename = {"__enter__": "__aenter__", "__exit__": "__aexit__"}
    assert {rename.get(n, n) for n in plain} == set(awaited)
    for name, member in plain.items():
        twin = awaited[rename.get(name, name)]
        if isinstance(member, property):
            assert isinstance(twin, property), name
            continue
        params, returns = _shape(member)
        twin_params, twin_returns = _shape(twin)
        assert params == twin_params, name
        assert inspect.getdoc(member) == inspect.getdoc(twin), name
        for old, new in ASYNC_NAMES.items():
            returns = returns.replace(old, new)
        returns = returns.replace("Iterator[", "AsyncIterator[")
        assert twin_returns == returns, name
        assert not inspect.iscoroutinefunction(member), name
        assert inspect.iscoroutinefunction(twin) or inspect.isasyncgenfunction(twin), name


def test_both_clients_are_drivers_of_one_set_of_operations() -> None:
    """No second copy: neither client holds upload, retry or sealing logic of its own."""
    source = Path(inspect.getfile(Client)).read_text()
    for needle in ("seal(", "remote_error", "key-rotated", "KEY_ROTATED", "encrypt_chunk"):
        assert needle not in source, needle


def _async_client(served: Served, **kwargs: Any) -> AsyncClient:
    kwargs.setdefault("policy", served.policy())
    kwargs.setdefault("api_key", TENANT_KEYS["default"])
    return AsyncClient(served.address, **kwargs)


@pytest.fixture(scope="module")
def digits_npz() -> bytes:
    data = load_digits()
    buf = io.BytesIO()
    np.savez(buf, x=data.x_train[:320], y=data.y_train[:320])
    return buf.getvalue()


def test_async_models_inference_and_audit(served: Served, tmp_path: Path) -> None:
    async def main() -> None:
        async with _async_client(served) as client:
            info = await client.upload_model(mlp_model(), "a")
            assert [m.ref for m in await client.list_models()] == [info.ref] == ["a@1"]
            out = await client.infer("a", {"x": X})
            assert out["probs"].shape == (5, 3)
            old = await client.audit_checkpoint()
            await client.infer("a", {"x": X})
            receipt = client.receipts[-1]
            proven = await client.prove_receipt(receipt)
            assert proven.size > receipt.leaf_index
            newer = await client.audit_consistency(old)
            assert newer.size >= old.size
            exported = await client.export_audit(tmp_path / "export")
            assert [m.ref for m in await client.delete_model("a")] == ["a@1"]
            with pytest.raises(RemoteError) as err:
                await client.delete_model("a")
            assert err.value.reason is RemoteReason.NOT_FOUND
        check = attestation_check(served.policy(), now=lambda: datetime.now(UTC))
        events = [r.event for _, r in verify_export(exported, attestation_check=check).records()]
        assert events[:3] == [
            EventType.MODEL_REGISTERED,
            EventType.MODEL_LISTED,
            EventType.INFERENCE,
        ]

    asyncio.run(main())


def test_async_key_rotation_reattests_once(served: Served) -> None:
    async def main() -> None:
        async with _async_client(served) as client:
            first = (await client.attest()).key_id
            await client.upload_model(mlp_model(), "m")
            served.enclave.rotate_keys()
            served.enclave.rotate_keys()
            await client.infer("m", {"x": X})
            assert (await client.attest()).key_id != first

    asyncio.run(main())
    assert served.calls.methods.count("/veil.v1.AttestationService/GetAttestation") == 2


def test_async_training_budget_and_exhaustion(served: Served, digits_npz: bytes) -> None:
    async def main() -> None:
        async with _async_client(served) as client:
            dataset = await client.upload_dataset(digits_npz, format="npz")
            job = await client.train(
                dataset, "logreg", target_epsilon=8.0, epochs=1, name="digits", seed=1
            )
            events = [event async for event in job.stream()]
            assert any(isinstance(e, TrainingProgress) for e in events)
            outcome = events[-1]
            assert isinstance(outcome, TrainingOutcome)
            assert await job.result() is outcome
            left = await client.budget(dataset)
            assert left.epsilon_spent == pytest.approx(outcome.record["epsilon"])
            second = await client.train(dataset, "logreg", target_epsilon=5.0, epochs=1)
            with pytest.raises(PrivacyBudgetExceeded) as err:
                await second.result()
            assert err.value.remaining_epsilon == pytest.approx(left.epsilon_remaining)
            assert err.value.remaining_delta == pytest.approx(left.delta_remaining)
            assert [m.ref for m in await client.list_models()] == ["digits@1"]

    asyncio.run(main())


def test_async_watermark_embed_and_verify(served: Served) -> None:
    from veil.watermark._models import SmallMLP, to_onnx, train

    torch.manual_seed(0)
    data = load_digits()
    model = to_onnx(train(SmallMLP(), data.x_train, data.y_train, epochs=8))
    buf = io.BytesIO()
    np.savez(buf, x=data.x_train, y=data.y_train)
    key = {
        "owner_private_key": (bytes([7]) * 32).hex(),
        "watermark": WatermarkKey(bytes([8]) * 32, bytes([9]) * 32).to_dict(),
    }

    async def main() -> None:
        async with _async_client(served) as client:
            await client.upload_model(model, "scorer")
            dataset = await client.upload_dataset(buf.getvalue(), format="npz")
            marked = await client.embed_watermark("scorer", key, dataset, epochs=10)
            assert marked.model.ref == "scorer@2"
            check = await client.verify_watermark(
                "scorer@2", marked.claim_json, {"watermark": key["watermark"]}
            )
            assert check.detected and check.model_sha256 == marked.model.sha256

    asyncio.run(main())


USER_SCRIPT = """\
import asyncio
from pathlib import Path

from veil.sdk import AsyncClient, AttestationPolicy, Client

policy = AttestationPolicy.simulated_for_tests(Path("root.pem"))

with Client("127.0.0.1:7443", api_key=Path("default.key"), policy=policy) as client:
    models = client.list_models()
    print(models[0].ref)
    client.infer("scorer", inputs=[1.0])  # MISUSE: a list, not a mapping of named tensors


async def main() -> None:
    async with AsyncClient("127.0.0.1:7443", api_key="k", policy=policy) as aclient:
        await aclient.infer("scorer", {"x": [1.0]})
        models = aclient.list_models()  # MISUSE: not awaited
        print(models[0].ref)


asyncio.run(main())
"""


def test_mypy_strict_catches_a_misuse_of_each_client(tmp_path: Path) -> None:
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            "user.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MYPYPATH": f"{root / 'sdk/src'}{os.pathsep}{root / 'protos/src'}"},
        check=False,
    )
    flagged = sorted(
        int(line.split(":")[1])
        for line in result.stdout.splitlines()
        if line.startswith("user.py:") and ": error:" in line
    )
    misuses = [i for i, line in enumerate(USER_SCRIPT.splitlines(), 1) if "MISUSE" in line]
    assert flagged == [misuses[0], misuses[1] + 1], result.stdout[-3000:]
