"""README's Python blocks, then its shell blocks, run in order against a live local enclave: an
example that breaks fails here. A block whose info string ends in ``no-run`` is skipped (README
says so).

The enclave is the suite's real server on 127.0.0.1 port 0; README's ``127.0.0.1:7443`` is
replaced by its address, and ``D/`` (README's ``veil serve --data-dir D``) is its data folder,
holding ``default.key`` (with the trailing newline ``veil serve`` writes) and the simulated root.
Shell blocks run under ``bash -e`` with the ``veil`` of this environment first on ``PATH``; their
``veil serve`` lines are left out (the enclave is already serving).
"""

from __future__ import annotations

import contextlib
import io
import json
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


def runnable(text: str, language: str = "python") -> list[str]:
    return [
        code
        for info, code in blocks(text)
        if info.split()[:1] == [language] and "no-run" not in info.split()[1:]
    ]


def shell_script(code: str, address: str) -> str:
    """A README shell block as run here: no `veil serve` (already serving), the live address."""
    kept = [line for line in code.splitlines() if not line.lstrip().startswith("veil serve")]
    kept = [line for line in kept if not line.lstrip().startswith("#")]  # its continuation
    return "\n".join(kept).replace(README_TARGET, address) + "\n"


def test_fences_are_found_and_no_run_is_honoured() -> None:
    text = "```python\na = 1\n```\n\n```python no-run\nraise SystemExit\n```\n```sh\nls\n```\n"
    assert runnable(text) == ["a = 1\n"]
    assert runnable(text, "sh") == ["ls\n"]
    served = "veil serve --data-dir D &  # starts\n     # more comment\nveil attest\n"
    assert shell_script(served, "h:1") == "veil attest\n"


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

    x = np.zeros((1, 4), np.float32)
    np.save(tmp_path / "x.npy", x)
    shells = runnable(text, "sh")
    assert any("veil infer" in code for code in shells), "README lost its CLI walk-through"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VEIL_")},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for i, code in enumerate(shells):
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", shell_script(code, served.address)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
        )
        assert result.returncode == 0, f"README sh block {i + 1}:\n{result.stderr}"
        assert "Traceback" not in result.stderr
    assert (tmp_path / "out" / "probs.npy").exists()  # `veil infer --out out/` wrote its output
    assert (tmp_path / "audit-cli" / "entries.jsonl").exists()
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["epsilon"] <= 2.0 and record["model"].startswith("mlp")
