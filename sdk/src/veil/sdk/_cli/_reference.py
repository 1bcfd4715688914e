"""The command reference at the end of docs/CLI.md, rendered from the parser itself.

``python -m veil.sdk._cli._reference --write docs/CLI.md`` rewrites everything after
:data:`MARKER`; tests/test_cli_contract.py fails when the file and the parser disagree, so the
reference cannot drift from the commands.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

MARKER = (
    "<!-- Generated from the parser: python -m veil.sdk._cli._reference --write docs/CLI.md."
    " Do not edit below this line. -->"
)


def _commands(
    parser: argparse.ArgumentParser, path: str = "veil"
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.prefix_chars == "\0":
                    continue  # a placeholder: that command's distribution is not installed
                full = f"{path} {name}"
                yield full, helps.get(name, ""), sub
                yield from _commands(sub, full)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_reference(parser: argparse.ArgumentParser) -> str:
    """Markdown: for every command, its usage line and a table of its arguments."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "10000"  # usage on one line, whatever the terminal
    try:
        out = [MARKER, "", "## Reference", ""]
        for path, help_text, sub in _commands(parser):
            formatter = sub._get_formatter()
            usage = " ".join(sub.format_usage().split())
            out += [f"### `{path}`", "", _cell(sub.description or help_text), ""]
            out += [f"`{usage.removeprefix('usage: ')}`", ""]
            rows = []
            for action in sub._actions:
                if action.help == argparse.SUPPRESS or isinstance(
                    action, (argparse._HelpAction, argparse._SubParsersAction)
                ):
                    continue
                name = formatter._format_action_invocation(action)
                rows.append(f"| `{_cell(name)}` | {_cell(formatter._expand_help(action))} |")
            subcommands = [p for p, _, _ in _commands(sub, path)]
            if rows:
                out += ["| argument | what it does |", "|---|---|", *rows, ""]
            if subcommands:
                out += ["Commands: " + ", ".join(f"`{p}`" for p in subcommands), ""]
        return "\n".join(out).rstrip() + "\n"
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def section(text: str) -> str:
    """The generated part of a document (from the marker on; empty when it has none)."""
    at = text.find(MARKER)
    return "" if at < 0 else text[at:]


def write(path: Path, parser: argparse.ArgumentParser) -> None:
    text = path.read_text()
    at = text.find(MARKER)
    head = text if at < 0 else text[:at]
    path.write_text(head.rstrip() + "\n\n" + render_reference(parser))


def main(argv: Sequence[str] | None = None) -> int:
    from veil.sdk._cli._app import build_parser

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--write"] and len(args) == 2:
        write(Path(args[1]), build_parser())
    else:
        print(render_reference(build_parser()), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
