"""``veil audit verify DIR``: verify an audit export offline.

Registered through the ``veil.commands`` entry-point group: ``register(subparsers)`` adds the
``audit`` command. Exit codes: 0 verified, 1 rejected (first failure on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sdk._errors import VeilError
from sdk.audit._export import verify_export

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``audit`` (with ``verify``) to the ``veil`` command's subparsers."""
    audit = subparsers.add_parser("audit", help="work with Veil audit logs")
    audit.set_defaults(func=_usage(audit))
    commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND")
    verify = commands.add_parser("verify", help="verify an audit export directory offline")
    verify.add_argument("dir", metavar="DIR", help="export directory")
    verify.add_argument("--expect-key", metavar="VKEY", help="pin the log verifier key")
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=_verify)


def _usage(parser: argparse.ArgumentParser) -> Any:
    def handler(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        return 2

    return handler


def _verify(args: argparse.Namespace) -> int:
    try:
        result = verify_export(args.dir, expect_vkey=args.expect_key)
    except VeilError as exc:
        if args.json:
            print(json.dumps({"verified": False, "error": str(exc)}))
        print(f"veil audit verify: {exc}", file=sys.stderr)
        return 1
    summary = {
        "verified": True,
        "log": result.checkpoint.origin,
        "tenant": result.tenant,
        "tree_size": result.checkpoint.size,
        "entries": result.entry_count,
        "full": result.full,
        "vkey": result.vkey,
    }
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(
            f"verified {result.entry_count} entries of {result.checkpoint.origin!r} "
            f"(tree size {result.checkpoint.size}) under {result.vkey}"
        )
    return 0
