"""`veil watermark verify` usage contract: --opening is required, in the help and when missing."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from veil.watermark.cli import main


def test_verify_help_shows_opening_as_required(capsys: Any) -> None:
    assert main(["watermark", "verify", "--help"]) == 0
    out = capsys.readouterr().out
    usage = out.split("\n\n")[0]
    # argparse brackets optional flags in the usage line; a required one stands bare
    assert re.search(r"(?<!\[)--opening\s+OPENING(?!\])", usage)
    assert "[--opening" not in usage
    assert re.search(r"--opening OPENING\s+required", out)


def test_verify_without_opening_exits_2_with_one_line(tmp_path: Path, capsys: Any) -> None:
    model, claim = tmp_path / "m.onnx", tmp_path / "c.json"
    model.write_bytes(b"x")
    claim.write_text("{}")
    assert main(["watermark", "verify", "--model", str(model), "--claim", str(claim)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, lines
    assert "--opening" in lines[0] and "required" in lines[0]


def test_other_watermark_usage_errors_are_one_line(capsys: Any) -> None:
    assert main(["watermark", "verify", "--bogus"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
