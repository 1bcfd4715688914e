"""The reliability suite's summary: each check's outcome and the figures it measured.

Printed at the end of ``make soak`` (and written as JSON to ``$SOAK_FIGURES`` when set), so the
figures in docs/RELIABILITY.md can be refreshed from one run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from soak.soak_support import FIGURES, record

OUTCOMES: dict[str, str] = {}


def _check(test_name: str) -> str:
    return test_name.removeprefix("test_")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str, object], None]:
    """``figures(name, value)`` records a figure under this test's check name."""
    check = _check(request.node.name)
    return lambda name, value: record(check, name, value)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "soak" not in report.keywords or (report.when != "call" and report.passed):
        return
    outcome: str = report.outcome
    if report.skipped and isinstance(report.longrepr, tuple):
        outcome = f"skipped: {report.longrepr[2]}"
    elif report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        message = crash.message if crash is not None else str(report.longrepr)
        outcome = f"FAILED ({report.when}): {message.splitlines()[0][:200] if message else ''}"
    OUTCOMES[_check(report.nodeid.rsplit("::", 1)[-1])] = outcome


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not OUTCOMES:
        return
    write = terminalreporter.write_line
    terminalreporter.section("reliability figures")
    for name, outcome in OUTCOMES.items():
        write(f"{name}: {outcome}")
        for key, value in FIGURES.get(name, {}).items():
            write(f"    {key:<42} {value}")
    target = os.environ.get("SOAK_FIGURES")
    if target:
        doc = {
            name: {"outcome": outcome, "figures": FIGURES.get(name, {})}
            for name, outcome in OUTCOMES.items()
        }
        Path(target).write_text(json.dumps(doc, indent=2) + "\n")
        write(f"figures written to {target}")
