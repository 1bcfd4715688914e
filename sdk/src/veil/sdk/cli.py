"""The ``veil`` command line: ``main``, and what a command from another distribution needs.

docs/CLI.md is the reference (every command, the exit codes, the JSON shapes). The SDK's own
commands live in ``veil.sdk._cli``; other distributions add theirs through the
``veil.commands`` entry-point group: each entry point is ``register(subparsers) -> None``,
which calls :func:`add_command` with a handler that returns an :class:`Outcome` or raises a
``VeilError``. The handler never prints its own errors nor picks an exit code: ``main`` does,
once, from the exception (0 ok; 1 refused, malformed inputs included; 2 usage).
"""

from __future__ import annotations

import sys

from veil.sdk._cli._app import build_parser, main
from veil.sdk._cli._framework import (
    DEFAULT_PORT,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    Handler,
    Outcome,
    Rejected,
    UsageError,
    add_client_options,
    add_command,
    add_group,
    client_from_args,
    deprecated_alias,
    fraction,
    iso_time,
    positive_float,
    positive_int,
    read_input,
    read_json,
    read_text,
    require,
    value_type,
    warn,
    write_output,
)

__all__ = [
    "DEFAULT_PORT",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "Handler",
    "Outcome",
    "Rejected",
    "UsageError",
    "add_client_options",
    "add_command",
    "add_group",
    "build_parser",
    "client_from_args",
    "deprecated_alias",
    "fraction",
    "iso_time",
    "main",
    "positive_float",
    "positive_int",
    "read_input",
    "read_json",
    "read_text",
    "require",
    "value_type",
    "warn",
    "write_output",
]

if __name__ == "__main__":
    sys.exit(main())
