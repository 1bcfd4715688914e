"""README's Python blocks run, in order, against a live local enclave: an example that breaks
fails here. A block whose info string is ``python no-run`` is skipped (README says so).

The enclave is the suite's real server on 127.0.0.1 port 0; README's ``127.0.0.1:7443`` is
replaced by its address, and ``D/`` (README's ``veil serve --data-dir D``) is its data folder,
holding ``default.key`` (with the trailing newline ``veil serve`` writes) and the simulated root.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from enclave_support import TENANT_KEYS, Served, mlp_model

from veil.watermark._models import load_digits

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.M | re.S)
README_TARGET = "127.0.0.1:7443"


def blocks(text: str) -> list[tuple[str, str]]:
    """(info string, code) of every fenced block, in order."""
    return [(info.strip(), code) for info, code in FENCE.findall(text)]


def runnable(text: str) -> list[str]:
    return [
        code
        for info, code in blocks(text)
        if info.split()[:1] == ["python"] and "no-run" not in info.split()[1:]
    ]


def test_fences_are_found_and_no_run_is_honoured() -> None:
    text = "```python\na = 1\n```\n\n```python no-run\nraise SystemExit\n```\n```sh\nls\n```\n"
    assert runnable(text) == ["a = 1\n"]


def test_readme_python_blocks_run_against_a_live_enclave(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = README.read_text()
    codes = runnable(text)
    assert len(codes) >= 3, "README lost its runnable examples"
    data = served.data_dir
    (data / "default.key").write_text(TENANT_KEYS["default"] + "\n")  # as `veil serve` writes it
    (data / "simulated-root.pem").write_bytes(served.root_pem)
    (tmp_path / "D").symlink_to(data)
    (tmp_path / "model.onnx").write_bytes(mlp_model())
    digits = load_digits()
    np.savez(tmp_path / "train.npz", x=digits.x_train[:320], y=digits.y_train[:320])
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    printed = io.StringIO()
    for i, code in enumerate(codes):
        source = code.replace(README_TARGET, served.address)
        with contextlib.redirect_stdout(printed):
            exec(compile(source, f"README.md python block {i + 1}", "exec"), namespace)
    lines = printed.getvalue().splitlines()
    assert lines, "the examples print nothing"
    assert max(len(line) for line in lines) < 400, "a printed result dumps raw bytes"
    assert any(line.startswith("TrainingOutcome(model='digits@1'") for line in lines)

    command = next(
        line.split("#")[0].split()
        for info, code in blocks(text)
        if info == "sh"
        for line in code.splitlines()
        if line.startswith("veil audit verify audit-export/")
    )
    result = subprocess.run(
        [sys.executable, "-m", "veil.sdk.cli", *command[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
