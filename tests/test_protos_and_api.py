"""The committed generated code matches the .proto contract; the public API is what we mean."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

from conftest import REPO_ROOT

import veil.sdk as sdk


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "gen_protos", REPO_ROOT / "scripts" / "gen_protos.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    generated = _generator().generate(tmp_path)
    assert len(generated) == 3 * len(list((REPO_ROOT / "protos/src/veil/v1").glob("*.proto")))
    for path in generated:
        committed = REPO_ROOT / "protos/src/veil/v1" / path.name
        assert committed.exists(), f"{path.name} is not committed: run `make protos`"
        assert committed.read_text() == path.read_text(), f"{path.name} is stale: run `make protos`"


def test_public_api_is_curated() -> None:
    assert sorted(sdk.__all__) == sdk.__all__
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None
    public = {
        n for n in dir(sdk) if not n.startswith("_") and not inspect.ismodule(getattr(sdk, n))
    }
    assert public - {"annotations"} == set(sdk.__all__)


def test_every_error_has_one_root() -> None:
    errors = [
        getattr(sdk, n) for n in sdk.__all__ if n.endswith("Error") or n == "PrivacyBudgetExceeded"
    ]
    assert errors and all(issubclass(e, sdk.VeilError) for e in errors)
