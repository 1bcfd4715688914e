"""Insecure modes stay loud without Veil touching the warning filters.

``InsecureModeWarning`` is attributed to the caller's own line, so Python's filters (the
program's, ``-W``, ``PYTHONWARNINGS`` — which at startup can name only built-in categories, so
by message) decide: shown once per line by default, every time with
``always``, an error with ``error``. Importing the SDK changes no filter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from enclave_support import Served

from veil.sdk import InsecureModeWarning

SCRIPT = """
from veil.sdk.errors import warn_insecure
for _ in range(3):
    warn_insecure("trusting a test root for this check")
print("done")
"""


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "", **env},
        check=False,
    )


def test_importing_the_sdk_changes_no_warning_filter() -> None:
    result = _run(  # third-party imports may add filters of their own; Veil's would name it
        "import warnings\n"
        "import veil.sdk\n"
        "assert not [f for f in warnings.filters if f[2] is veil.sdk.InsecureModeWarning]\n"
        "print('same')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "same"


def test_default_filters_show_it_once_per_line_and_users_decide_the_rest() -> None:
    shown = _run(SCRIPT)
    assert shown.returncode == 0 and shown.stderr.count("InsecureModeWarning") == 1
    assert "<string>" in shown.stderr  # attributed to the caller's code, not to Veil's
    every = _run(SCRIPT, PYTHONWARNINGS="always::UserWarning")
    assert every.stderr.count("InsecureModeWarning") == 3
    silenced = _run(SCRIPT, PYTHONWARNINGS="ignore:trusting a test root")
    assert silenced.returncode == 0 and "InsecureModeWarning" not in silenced.stderr
    fatal = _run(SCRIPT, PYTHONWARNINGS="error:trusting a test root")
    assert fatal.returncode == 1 and "done" not in fatal.stdout
    assert "InsecureModeWarning: trusting a test root" in fatal.stderr


def test_attestation_under_a_test_root_warns_at_the_callers_line(served: Served) -> None:
    with served.client() as client, pytest.warns(InsecureModeWarning) as record:
        enclave = client.attest()
    assert enclave.insecure_root
    assert [Path(w.filename).name for w in record] == [Path(__file__).name]


def test_a_users_error_filter_refuses_the_test_root(served: Served) -> None:
    with served.client() as client, warnings.catch_warnings():
        warnings.simplefilter("error", InsecureModeWarning)
        with pytest.raises(InsecureModeWarning, match="trusting a test root"):
            client.attest()
