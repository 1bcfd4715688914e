"""``veil audit export`` (a tenant's log, from an enclave) and ``veil audit verify DIR`` (offline).

An export folder that is present but malformed, truncated or tampered with is refused (exit 1);
a folder that does not exist is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from veil.sdk._audit_client import attestation_check
from veil.sdk._cli._framework import (
    Outcome,
    UsageError,
    add_client_options,
    add_command,
    add_group,
    add_trust_options,
    attestation_policy,
    client_from_args,
    iso_time,
)
from veil.sdk.audit import Checkpoint, SignedNote
from veil.sdk.audit.export import CHECKPOINT_FILE, verify_export
from veil.sdk.audit.merge import MERGED_FILE, verify_merged_export
from veil.sdk.errors import ConfigFailure

__all__ = ["register"]

EXPORT_FORMATS = ("jsonl", "ocsf", "csv")


def register(sub: Any) -> None:
    """``veil audit export`` and ``veil audit verify``."""
    verbs = add_group(sub, "audit", help="export a tenant's audit log; verify an export offline")

    verify = add_command(verbs, "verify", _verify, help="verify an audit export folder offline")
    verify.add_argument("dir", type=Path, metavar="DIR", help="the export folder")
    verify.add_argument("--expect-key", metavar="VKEY", help="pin the log's verifier key")
    add_trust_options(verify, what="DIR/attestation (the evidence that binds the log key)")
    verify.add_argument(
        "--no-attestation",
        action="store_true",
        help="skip DIR/attestation (then pin the key with --expect-key)",
    )

    export = add_command(verbs, "export", _export, help="export this tenant's log from an enclave")
    add_client_options(export)
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="empty or new")
    export.add_argument(
        "--since",
        type=_since,
        metavar="ISO8601|INDEX",
        help="first record time (inclusive), or first leaf index: pass the tree size an earlier "
        "export printed to fetch only what was added since (with proofs into the new checkpoint)",
    )
    export.add_argument(
        "--until", type=iso_time, metavar="ISO8601", help="last record time (exclusive)"
    )
    export.add_argument(
        "--format",
        action="append",
        choices=EXPORT_FORMATS,
        default=[],
        help="derived views besides entries.jsonl (repeatable)",
    )


def _since(text: str) -> datetime | int:
    return int(text) if text.isdigit() else iso_time(text)


def _export(args: argparse.Namespace) -> Outcome:
    with client_from_args(args) as client:
        out = client.export_audit(
            args.out,
            since=args.since,
            until=args.until,
            formats=[f for f in args.format if f != "jsonl"],
        )
    note = SignedNote.from_text((out / CHECKPOINT_FILE).read_bytes())
    size = Checkpoint.from_text(note.text).size
    return Outcome(
        {"out": str(out), "tree_size": size},
        f"exported to {out} (tree size {size}; continue later with --since {size})",
    )


def _check(args: argparse.Namespace) -> Callable[[Path], str] | None:
    if args.no_attestation:
        return None
    return attestation_check(attestation_policy(args), now=lambda: datetime.now(UTC))


def _verify_merged(args: argparse.Namespace) -> Outcome:
    if args.expect_key:
        raise UsageError("--expect-key pins one log; a merged export holds one per replica")
    merged = verify_merged_export(args.dir, attestation_check=_check(args))
    summary = {
        "verified": True,
        "tenant": merged.tenant,
        "entries": merged.entry_count,
        "logs": [
            {"log": e.checkpoint.origin, "tree_size": e.checkpoint.size, "vkey": e.vkey}
            for e in merged.replicas
        ],
    }
    return Outcome(
        summary,
        f"verified the merge of {len(merged.replicas)} replica logs of tenant "
        f"{merged.tenant!r}: {merged.entry_count} entries, each log under its attested key",
    )


def _verify(args: argparse.Namespace) -> Outcome:
    if not args.dir.is_dir():
        raise UsageError(f"{args.dir}: no such folder", reason=ConfigFailure.MISSING_FILE)
    if (args.dir / MERGED_FILE).exists():  # several replicas' logs (docs/SCALE-OUT.md)
        return _verify_merged(args)
    result = verify_export(args.dir, expect_vkey=args.expect_key, attestation_check=_check(args))
    summary = {
        "verified": True,
        "log": result.checkpoint.origin,
        "tenant": result.tenant,
        "tree_size": result.checkpoint.size,
        "entries": result.entry_count,
        "full": result.full,
        "vkey": result.vkey,
    }
    return Outcome(
        summary,
        f"verified {result.entry_count} entries of {result.checkpoint.origin!r} "
        f"(tree size {result.checkpoint.size}) under {result.vkey}",
    )
