"""The audit packages' public surface, their dependency direction, and parser fuzzing."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import veil.enclave.audit
import veil.sdk.audit
from veil.sdk.audit import AuditRecord, Checkpoint, Receipt, SignedNote, Verifier
from veil.sdk.errors import VeilError

REPO = Path(__file__).resolve().parents[1]


def test_all_is_sorted_and_importable() -> None:
    for module in (veil.sdk.audit, veil.enclave.audit):
        assert list(module.__all__) == sorted(module.__all__)
        for name in module.__all__:
            assert getattr(module, name) is not None
            assert not name.startswith("_")


def test_sdk_audit_stays_light() -> None:
    code = (
        "import sys, veil.sdk.audit, veil.sdk.cli\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('enclave', 'torch', 'onnxruntime', 'opacus')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def _only_our_errors(parse: Callable[[Any], object], data: object) -> None:
    with contextlib.suppress(VeilError):
        parse(data)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=200) | st.just("a\n1\nAAAA\n\n\u2014 a AAAAAAAA\n"))
def test_text_parsers_raise_only_veil_errors(text: str) -> None:
    parsers: list[Callable[[Any], object]] = [
        SignedNote.from_text,
        Checkpoint.from_text,
        Verifier.from_vkey,
        Receipt.from_body,
    ]
    for parse in parsers:
        _only_our_errors(parse, text)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=100).map(lambda s: ('{"v":1,' + s).encode()))
def test_line_parsers_raise_only_veil_errors(data: bytes) -> None:
    _only_our_errors(AuditRecord.from_line, data)
    _only_our_errors(SignedNote.from_text, data)
