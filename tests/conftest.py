"""Shared fixtures. Conformance vectors live in tests/vectors (provenance: SOURCES.md there)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# Property and fuzz tests replay the same examples on every run ("ci", the default), so a red
# build always means a change broke something. `make fuzz` explores new random examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=2000, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO_ROOT = Path(__file__).resolve().parents[1]
VECTORS_DIR = REPO_ROOT / "tests" / "vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    """Root of the conformance vectors (real evidence nobody here wrote)."""
    if not VECTORS_DIR.is_dir():
        raise RuntimeError(f"conformance vectors not found at {VECTORS_DIR}")
    return VECTORS_DIR


# -- a real enclave for tests that need one (imports are lazy: heavy, and not every test needs it)


@pytest.fixture(scope="session")
def tee_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One simulated platform for the whole run (RSA-4096 key generation is slow)."""
    from veil.enclave.tee._simulated import SimulatedSnp

    root = tmp_path_factory.mktemp("tee-template")
    SimulatedSnp.load_or_create(root)
    return root / "simulated-tee"


@pytest.fixture
def data_dir(tmp_path: Path, tee_template: Path) -> Path:
    """A data directory with the shared simulated platform and two tenants."""
    from enclave_support import write_config

    data = tmp_path / "data"
    shutil.copytree(tee_template, data / "simulated-tee")
    write_config(data)
    return data


@pytest.fixture
def served(data_dir: Path) -> Iterator[Any]:
    """A running enclave (real gRPC server on 127.0.0.1, port 0); stopped after the test."""
    from enclave_support import start

    s = start(data_dir)
    try:
        yield s
    finally:
        s.running.stop(grace=None)
