"""``veil policy keygen|sign|check``: the operator's signed attestation policy files.

    veil policy keygen --out operator.key      # writes operator.key (0600) and operator.key.pub
    veil policy sign POLICY.toml --key operator.key        # writes POLICY.toml.sig
    veil policy check POLICY.toml --key operator.key.pub --json

A policy that is present but invalid, or whose signature does not verify, is refused (exit 1);
a missing file, or a key file that is not the kind of key the option asks for, is a usage
error (exit 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from veil.sdk._cli._framework import (
    Outcome,
    Rejected,
    UsageError,
    add_command,
    add_group,
    read_input,
    warn,
    write_output,
)
from veil.sdk.attestation._policy_file import (
    PolicyFile,
    load_policy_key,
    load_signed_policy,
    parse_policy,
    policy_key_id,
    sign_policy,
    signature_path,
)
from veil.sdk.errors import AttestationError, ConfigError, ConfigFailure

__all__ = ["register"]


def register(sub: Any) -> None:
    """``veil policy keygen|sign|check``."""
    verbs = add_group(sub, "policy", help="create, sign and check attestation policy files")
    keygen = add_command(verbs, "keygen", _keygen, help="create an Ed25519 policy-signing key")
    keygen.add_argument(
        "--out", type=Path, required=True, metavar="KEY", help="the private key (KEY.pub beside)"
    )
    sign = add_command(verbs, "sign", _sign, help="sign POLICY (writes POLICY.sig)")
    sign.add_argument("policy", type=Path, metavar="POLICY", help="the policy file (TOML)")
    sign.add_argument("--key", type=Path, required=True, metavar="KEY", help="private key (PEM)")
    check = add_command(
        verbs, "check", _check, help="validate POLICY (and its signature with --key)"
    )
    check.add_argument("policy", type=Path, metavar="POLICY", help="the policy file (TOML)")
    check.add_argument(
        "--key",
        type=Path,
        action="append",
        default=[],
        metavar="PUB",
        help="trusted operator public key: require a valid POLICY.sig (repeatable)",
    )


def _keygen(args: argparse.Namespace) -> Outcome:
    out: Path = args.out
    pub = out.with_name(out.name + ".pub")
    if out.exists() or pub.exists():
        raise UsageError(f"--out {out}: it or {pub.name} exists: refusing to overwrite a key")
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_output(out, private, "--out", mode=0o600)
    public = key.public_key()
    write_output(
        pub,
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "--out",
        mode=0o644,
    )
    key_id = policy_key_id(public)
    return Outcome(
        {"private_key": str(out), "public_key": str(pub), "key_id": key_id},
        f"wrote {out} (private, 0600) and {pub}; key id {key_id[:16]}",
    )


def _private_key(path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(read_input(path, "--key"), password=None)
    except (ValueError, TypeError):
        raise UsageError(
            f"--key {path} is not an unencrypted PEM private key", reason=ConfigFailure.MALFORMED
        ) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise UsageError(f"--key {path} is not an Ed25519 private key")
    return key


def _sign(args: argparse.Namespace) -> Outcome:
    data = read_input(args.policy, "policy")
    key = _private_key(args.key)
    # Never sign what would not load: validate first (roots, measurements, key paths).
    parse_policy(data, source=args.policy.name, base_dir=args.policy.parent)
    sig = signature_path(args.policy)
    write_output(sig, sign_policy(data, key), "signature", mode=0o644)
    key_id = policy_key_id(key.public_key())
    return Outcome(
        {"policy": str(args.policy), "signature": str(sig), "key_id": key_id},
        f"signed {args.policy} -> {sig} (key id {key_id[:16]})",
    )


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


def _check(args: argparse.Namespace) -> Outcome:
    data = read_input(args.policy, "policy")
    try:
        if args.key:
            keys = []
            for path in args.key:
                try:
                    keys.append(load_policy_key(read_input(path, "--key")))
                except ConfigError as exc:
                    raise UsageError(f"--key {path}: {exc}") from None
            policy = load_signed_policy(args.policy, keys)
        else:
            policy = parse_policy(data, source=args.policy.name, base_dir=args.policy.parent)
    except (ConfigError, AttestationError) as exc:
        if isinstance(exc, UsageError):
            raise
        raise Rejected(exc, valid=False) from None
    if not args.key:
        warn("signature not checked (pass --key PUB)")
    doc = _summary(policy)
    signed = f", signed by key {policy.signed_by[:16]}" if policy.signed_by else " (unsigned)"
    return Outcome(doc, f"{policy.source}: valid{signed}; TEEs {', '.join(doc['allowed_tees'])}")
