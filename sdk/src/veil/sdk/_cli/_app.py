"""The ``veil`` parser tree and ``main``: the one error path every command's failure takes."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from veil.sdk._cli import attest, audit, models, policy, train
from veil.sdk._cli._framework import (
    EXIT_REFUSED,
    EXIT_USAGE,
    Outcome,
    Parser,
    Rejected,
    UsageError,
    error_doc,
    exit_code,
    json_text,
)
from veil.sdk.errors import ConfigError, ConfigFailure, VeilError

# The SDK's own commands, in the order `veil --help` lists them.
BUILT_IN: tuple[Callable[[Any], None], ...] = (
    attest.register,
    models.register_models,
    models.register_infer,
    train.register_train,
    train.register_budget,
    audit.register,
    policy.register,
)

# Commands other distributions add through the `veil.commands` entry points; without them,
# `veil NAME` says what to install.
ELSEWHERE = {
    "serve": ("veil-ai-enclave", "run an enclave service"),
    "measure": ("veil-ai-enclave", "print the measurement clients should pin"),
    "watermark": ("veil-ai-watermark", "embed and verify model watermarks"),
}
ENTRY_POINT_GROUP = "veil.commands"


def build_parser() -> Parser:
    parser = Parser(prog="veil", description="Veil: attested, end-to-end sealed AI in enclaves.")
    parser.add_argument("--version", action="version", version=_version())
    parser.set_defaults(json=False, cli_prog="veil")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in BUILT_IN:
        register(sub)
    built_in = set(sub.choices)
    for entry in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if entry.name in built_in:
            continue  # an SDK command: registered above
        try:
            plugin: Callable[[Any], None] = entry.load()
        except ImportError as exc:  # installed, but a dependency of it is not
            _add_unavailable(sub, entry.name, f"it cannot load ({exc})")
            continue
        before = set(sub.choices)
        dist = getattr(getattr(entry, "dist", None), "name", None)
        try:
            plugin(sub)
        except ImportError as exc:  # its registration needs a dependency that is not there
            _add_broken(sub, entry.name, exc, dist)
            continue
        for name in set(sub.choices) - before:
            sub.choices[name].set_defaults(cli_distribution=dist)
    for name, (distribution, help_text) in ELSEWHERE.items():
        if name not in sub.choices:
            why = f"it comes with {distribution}: pip install {distribution}"
            _add_unavailable(sub, name, why, help_text)
    return parser


def _add_unavailable(sub: Any, name: str, why: str, help_text: str | None = None) -> None:
    # Every argument is taken as given (no option parsing): the answer is the same for all.
    parser = sub.add_parser(
        name, help=f"(not installed) {help_text or ''}".rstrip(), add_help=False, prefix_chars="\0"
    )
    parser.add_argument("args", nargs="*")

    def unavailable(_args: argparse.Namespace) -> Outcome:
        raise UsageError(f"not installed here: {why}", reason=ConfigFailure.UNSUPPORTED)

    parser.set_defaults(func=unavailable, cli_prog=parser.prog)


def _add_broken(sub: Any, name: str, error: ImportError, distribution: str | None) -> None:
    """``veil NAME`` answers what ``error`` says is missing (through the one error path)."""
    if name in sub.choices:  # registered before the failure: its own parser stays
        parser = sub.choices[name]
    else:
        parser = sub.add_parser(name, add_help=False, prefix_chars="\0")
        parser.add_argument("args", nargs="*")

    def broken(_args: argparse.Namespace) -> Outcome:
        raise error

    parser.set_defaults(func=broken, cli_prog=parser.prog, cli_distribution=distribution)


def _version() -> str:
    try:
        return f"veil {metadata.version('veil-ai-sdk')}"
    except metadata.PackageNotFoundError:
        return "veil (not installed)"


def _format_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    return f"veil: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``veil ARGS``; returns the exit code (0 ok, 1 refused, 2 usage)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in arguments
    prog = "veil"
    args: argparse.Namespace | None = None
    shown_as, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:  # warnings are one line each; which ones show is the user's filters' call
        try:
            args = build_parser().parse_args(arguments)
            as_json, prog = bool(args.json), args.cli_prog
            outcome: Outcome = args.func(args)
        except SystemExit as exc:  # --help, --version
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        except KeyboardInterrupt:
            return 130
        except Exception as exc:  # the one error path: every failure ends here
            return _fail(exc, prog, as_json, args)
    finally:
        warnings.formatwarning = shown_as
    if as_json and outcome.doc is not None:
        print(json_text(outcome.doc))
    elif outcome.text:
        print(outcome.text)
    return outcome.code


def _fail(exc: Exception, prog: str, as_json: bool, args: argparse.Namespace | None) -> int:
    extra: dict[str, Any] = {}
    if isinstance(exc, Rejected):
        extra, exc = exc.extra, exc.error
    if isinstance(exc, ImportError):
        dist = getattr(args, "cli_distribution", None)
        hint = f"pip install {dist} installs it" if dist else "install it"
        exc = UsageError(
            f"needs the {exc.name or 'missing'} package, which is not installed ({hint})",
            reason=ConfigFailure.UNSUPPORTED,
        )
    elif isinstance(exc, OSError) and exc.filename is not None:  # a file no edge check caught
        exc = UsageError(
            f"{exc.filename}: {exc.strerror or type(exc).__name__}",
            reason=ConfigFailure.UNREADABLE,
        )
    elif isinstance(exc, OSError):  # the system refused (a port in use, no space left, ...)
        exc = ConfigError(exc.strerror or str(exc), reason=ConfigFailure.INVALID_VALUE)
    if isinstance(exc, UsageError) and exc.prog:
        prog = exc.prog
    code = exit_code(exc) if isinstance(exc, VeilError) else EXIT_REFUSED
    message = str(exc) if isinstance(exc, VeilError) else f"internal error: {exc!r}"
    message = " ".join(message.split())  # one line, whatever the message held
    print(f"{prog}: error: {message}", file=sys.stderr)
    if as_json:
        print(json.dumps(error_doc(exc, extra), indent=2))
    return code
