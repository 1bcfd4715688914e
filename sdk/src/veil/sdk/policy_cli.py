"""``veil policy keygen|sign|check``: the operator's signed attestation policy files.

Registered through the ``veil.commands`` entry-point group
(``policy = "veil.sdk.policy_cli:register"``).
Exit codes: 0 success / valid, 1 invalid policy or bad signature (reason on stderr), 2 usage.

    veil policy keygen --out operator.key      # writes operator.key (0600) and operator.key.pub
    veil policy sign POLICY.toml --key operator.key        # writes POLICY.toml.sig
    veil policy check POLICY.toml --key operator.key.pub --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from veil.sdk.attestation._policy_file import (
    PolicyFile,
    load_policy,
    load_policy_key,
    load_signed_policy,
    parse_policy,
    policy_key_id,
    sign_policy,
    signature_path,
)
from veil.sdk.errors import AttestationError, ConfigError, VeilError

__all__ = ["main", "register"]

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class _Usage(Exception):
    pass


def register(subparsers: Any) -> None:
    """Add ``policy`` (keygen, sign, check) to the ``veil`` command's subparsers."""
    policy = subparsers.add_parser("policy", help="create, sign and check attestation policies")
    commands = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    keygen = commands.add_parser("keygen", help="create an Ed25519 policy-signing key")
    keygen.add_argument("--out", type=Path, required=True, metavar="KEY")
    keygen.set_defaults(func=_entry(_keygen))
    sign = commands.add_parser("sign", help="sign POLICY (writes POLICY.sig)")
    sign.add_argument("policy", type=Path, metavar="POLICY")
    sign.add_argument("--key", type=Path, required=True, metavar="KEY", help="private key (PEM)")
    sign.set_defaults(func=_entry(_sign))
    check = commands.add_parser("check", help="validate POLICY (and its signature with --key)")
    check.add_argument("policy", type=Path, metavar="POLICY")
    check.add_argument(
        "--key",
        type=Path,
        action="append",
        default=[],
        metavar="PUB",
        help="trusted operator public key: require a valid POLICY.sig (repeatable)",
    )
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_entry(_check))


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _Usage(f"cannot read {what} {path}: {exc.strerror}") from exc


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _keygen(args: argparse.Namespace) -> int:
    out: Path = args.out
    pub = out.with_name(out.name + ".pub")
    if out.exists() or pub.exists():
        raise _Usage(f"{out} or {pub} exists: refusing to overwrite a key")
    key = ed25519.Ed25519PrivateKey.generate()
    _write(
        out,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    public = key.public_key()
    _write(
        pub,
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        0o644,
    )
    print(f"wrote {out} (private, 0600) and {pub}; key id {policy_key_id(public)[:16]}")
    return EXIT_OK


def _private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path, "key"), password=None)
    except (ValueError, TypeError) as exc:
        raise _Usage(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise _Usage(f"{path} is not an Ed25519 private key")
    return key


def _sign(args: argparse.Namespace) -> int:
    data = _read(args.policy, "policy")
    key = _private_key(args.key)
    # Never sign what would not load: validate first (roots, measurements, key paths).
    parse_policy(data, source=args.policy.name, base_dir=args.policy.parent)
    sig = signature_path(args.policy)
    _write(sig, sign_policy(data, key), 0o644)
    print(f"signed {args.policy} -> {sig} (key id {policy_key_id(key.public_key())[:16]})")
    return EXIT_OK


def _summary(policy: PolicyFile) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "valid": True,
        "file": policy.source,
        "sha256": policy.sha256,
        "signed_by": policy.signed_by,
        "allowed_tees": sorted(policy.allowed_tees),
        "max_evidence_age_seconds": int(policy.max_evidence_age.total_seconds()),
        "releases": [
            {
                "name": r.name,
                "snp_measurements": sorted(m.hex() for m in r.snp_measurements),
                "tdx": None
                if r.tdx is None
                else {
                    k: getattr(r.tdx, k).hex()
                    for k in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")
                    if getattr(r.tdx, k) is not None
                },
            }
            for r in policy.releases
        ],
    }
    if policy.snp is not None:
        snp = policy.snp
        doc["snp"] = {
            "roots": [r.fingerprint for r in snp.roots],
            "insecure_roots": snp.insecure,
            "allow_debug": snp.allow_debug,
            "allowed_vmpls": sorted(snp.allowed_vmpls),
            "min_tcb": None if snp.min_tcb is None else str(snp.min_tcb),
        }
    if policy.tdx is not None:
        doc["tdx"] = {
            "insecure_roots": policy.tdx.insecure,
            "accepted_tcb_statuses": sorted(s.value for s in policy.tdx.accepted_tcb_statuses),
            "allow_debug": policy.tdx.allow_debug,
        }
    if policy.gpu is not None:
        doc["gpu"] = {
            "insecure_roots": policy.gpu.insecure,
            "rim_dir": None if policy.gpu.rim_dir is None else str(policy.gpu.rim_dir),
        }
    return doc


def _check(args: argparse.Namespace) -> int:
    try:
        if args.key:
            keys = [load_policy_key(_read(k, "key")) for k in args.key]
            policy = load_signed_policy(args.policy, keys)
        else:
            if not args.policy.exists():
                raise _Usage(f"cannot read policy {args.policy}")
            policy = load_policy(args.policy)
    except (ConfigError, AttestationError) as exc:
        if args.json:
            reason = exc.reason.value if isinstance(exc, AttestationError) else "invalid"
            print(json.dumps({"valid": False, "reason": reason, "error": str(exc)}, indent=2))
        print(f"veil: {exc}", file=sys.stderr)
        return EXIT_INVALID
    doc = _summary(policy)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        signed = f", signed by key {policy.signed_by[:16]}" if policy.signed_by else " (unsigned)"
        print(f"{policy.source}: valid{signed}; TEEs {', '.join(doc['allowed_tees'])}")
    if not args.key:
        print("veil: warning: signature not checked (pass --key PUB)", file=sys.stderr)
    return EXIT_OK


def _run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except _Usage as exc:
        print(f"veil policy: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except VeilError as exc:
        print(f"veil: {exc}", file=sys.stderr)
        return EXIT_INVALID


def _entry(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def wrapped(args: argparse.Namespace) -> int:
        return _run(handler, args)

    return wrapped


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m veil.sdk.policy_cli keygen|sign|check ...`` (same as ``veil policy ...``)."""
    parser = argparse.ArgumentParser(prog="veil")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policy", *(sys.argv[1:] if argv is None else argv)])
    handler: Callable[[argparse.Namespace], int] = args.func
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
