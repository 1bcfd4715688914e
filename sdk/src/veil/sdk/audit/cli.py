"""``veil audit export`` and ``veil audit verify DIR``: export a tenant's log, verify it offline.

Registered through the ``veil.commands`` entry-point group: ``register(subparsers)`` adds the
``audit`` command. Exit codes: 0 verified, 1 rejected (first failure on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from veil.sdk.audit import Checkpoint, SignedNote
from veil.sdk.audit.export import CHECKPOINT_FILE, verify_export
from veil.sdk.errors import VeilError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``audit`` (with ``verify``) to the ``veil`` command's subparsers."""
    audit = subparsers.add_parser("audit", help="work with Veil audit logs")
    audit.set_defaults(func=_usage(audit))
    commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND")
    verify = commands.add_parser("verify", help="verify an audit export directory offline")
    verify.add_argument("dir", metavar="DIR", help="export directory")
    verify.add_argument("--expect-key", metavar="VKEY", help="pin the log verifier key")
    verify.add_argument(
        "--trust-root",
        metavar="PEM",
        help="verify DIR/attestation under this root instead of AMD's (e.g. simulated-root.pem)",
    )
    verify.add_argument(
        "--expect-measurement",
        action="append",
        default=[],
        metavar="HEX",
        help="the enclave measurement the evidence must show (repeatable)",
    )
    verify.add_argument(
        "--no-attestation",
        action="store_true",
        help="skip DIR/attestation (then pin the key with --expect-key)",
    )
    verify.add_argument("--json", action="store_true", help="print the result as JSON")
    verify.set_defaults(func=_verify)

    from veil.sdk.cli import add_client_options

    export = commands.add_parser("export", help="export this tenant's log from an enclave")
    add_client_options(export)
    export.add_argument("--out", required=True, metavar="DIR", help="empty or new directory")
    export.add_argument(
        "--since",
        metavar="ISO8601|INDEX",
        help="first record time (inclusive), or first leaf index: pass the tree size an earlier "
        "export printed to fetch only what was added since (with proofs into the new checkpoint)",
    )
    export.add_argument("--until", metavar="ISO8601", help="last record time (exclusive)")
    export.add_argument(
        "--format",
        action="append",
        choices=["jsonl", "ocsf", "csv"],
        default=[],
        help="derived views besides entries.jsonl (repeatable)",
    )
    export.set_defaults(func=_export)


def _usage(parser: argparse.ArgumentParser) -> Any:
    def handler(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        return 2

    return handler


def _export(args: argparse.Namespace) -> int:
    from veil.sdk.cli import client_from_args, parse_time

    since: datetime | int | None = None
    if args.since:
        since = int(args.since) if args.since.isdigit() else parse_time(args.since)
    with client_from_args(args) as client:
        out = client.export_audit(
            args.out,
            since=since,
            until=parse_time(args.until) if args.until else None,
            formats=[f for f in args.format if f != "jsonl"],
        )
    note = SignedNote.from_text((out / CHECKPOINT_FILE).read_bytes())
    size = Checkpoint.from_text(note.text).size
    print(f"exported to {out} (tree size {size}; continue later with --since {size})")
    return 0


def _attestation_check(args: argparse.Namespace) -> Callable[[Path], str] | None:
    if args.no_attestation:
        return None
    from veil.sdk._audit_client import attestation_check
    from veil.sdk.attestation._policy import AttestationPolicy

    if args.trust_root:
        policy = AttestationPolicy.simulated_for_tests(
            Path(args.trust_root), measurements=args.expect_measurement
        )
    else:
        policy = AttestationPolicy.production(
            measurements=args.expect_measurement,
            allow_any_measurement=not args.expect_measurement,
        )
    return attestation_check(policy, now=lambda: datetime.now(UTC))


def _verify(args: argparse.Namespace) -> int:
    try:
        result = verify_export(
            args.dir, expect_vkey=args.expect_key, attestation_check=_attestation_check(args)
        )
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
