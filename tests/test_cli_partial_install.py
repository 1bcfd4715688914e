"""The ``veil`` command with only some of Veil's distributions installed (the SDK alone)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Runs `veil ARGS` with the entry points of the named commands hidden, as in an install of the
# SDK distribution alone, or with one that fails to import.
PROBE = """
import sys
from importlib import metadata
import veil.sdk.cli as cli
hidden, broken, args = sys.argv[1].split(","), sys.argv[2].split(","), sys.argv[3:]
real = metadata.entry_points
class Broken:
    def __init__(self, entry): self.name = entry.name
    def load(self): raise ModuleNotFoundError("No module named 'onnx'")
def entry_points(group):
    return [Broken(e) if e.name in broken else e for e in real(group=group) if e.name not in hidden]
metadata.entry_points = entry_points
sys.exit(cli.main(args))
"""


def _veil(*args: str, hidden: str = "", broken: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, hidden, broken, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "distribution"),
    [
        (["serve", "--data-dir", "d", "--port", "0"], "veil-ai-enclave"),
        (["measure", "--data-dir", "d"], "veil-ai-enclave"),
        (["watermark", "verify", "m.onnx"], "veil-ai-watermark"),
    ],
)
def test_a_command_of_a_missing_distribution_says_what_to_install(
    args: list[str], distribution: str
) -> None:
    out = _veil(*args, hidden="serve,measure,watermark")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"veil {args[0]}: error: not installed here: it comes with {distribution}: "
        f"pip install {distribution}"
    ]
    assert "Traceback" not in out.stderr


def test_a_command_that_cannot_import_says_why_in_one_line() -> None:
    out = _veil("serve", "--data-dir", "d", broken="serve")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "veil serve: error: not installed here: it cannot load (No module named 'onnx')"
    ]


def test_client_commands_still_work_without_the_server() -> None:
    out = _veil("--help", hidden="serve,measure,watermark")
    assert out.returncode == 0
    assert "(not installed) run an enclave service" in out.stdout
    assert "attest" in out.stdout


def test_version_names_the_sdk_distribution() -> None:
    out = _veil("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == "veil 0.1.0"


def test_serve_without_its_dependencies_says_what_is_missing_in_one_line(tmp_path: Path) -> None:
    # The enclave distribution is installed, but onnxruntime is not importable.
    blocked = "import sys; sys.modules['onnxruntime'] = None\n" + PROBE
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            blocked,
            "",
            "",
            "serve",
            "--data-dir",
            str(tmp_path),
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [
        "veil serve: error: needs the onnxruntime package, which is not installed "
        "(pip install veil-ai-enclave installs it)"
    ]
