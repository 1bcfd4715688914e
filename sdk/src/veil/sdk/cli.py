"""The ``veil`` command line.

Client commands live here; other parts of Veil add theirs through the ``veil.commands``
entry-point group (each entry point is ``register(subparsers) -> None`` and sets ``func`` to a
handler returning the exit code). Exit codes: 0 success, 1 refused or failed (reason on stderr),
2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from veil.sdk._client import Client
from veil.sdk._core import TlsOptions
from veil.sdk.attest_cli import add_verify_parser, snp_json
from veil.sdk.attestation._policy import AttestationPolicy
from veil.sdk.attestation._snp_verify import VerifiedSnpReport
from veil.sdk.errors import ConfigError, VeilError
from veil.sdk.evidence import AttestedEnclave
from veil.sdk.protocol import Suite

__all__ = ["add_client_options", "client_from_args", "main", "parse_time"]

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2
Handler = Callable[[argparse.Namespace], int]


def _die(message: str) -> int:
    print(f"veil: {message}", file=sys.stderr)
    return EXIT_REJECTED


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """Options every command that talks to an enclave takes."""
    parser.add_argument("--target", required=True, help="enclave address, HOST:PORT")
    parser.add_argument(
        "--api-key-file", type=Path, help="file holding the API key (default: $VEIL_API_KEY)"
    )
    parser.add_argument("--tenant", default="default", help="tenant name (default: default)")
    parser.add_argument(
        "--trust-root",
        type=Path,
        help="pin this root (PEM) instead of AMD's, e.g. DATA_DIR/simulated-root.pem (insecure)",
    )
    parser.add_argument(
        "--expect-measurement",
        action="append",
        default=[],
        metavar="HEX",
        help="accept only this measurement (repeatable)",
    )
    parser.add_argument("--pq", action="store_true", help="seal with ML-KEM-768+X25519")
    parser.add_argument("--tls-ca", type=Path, help="TLS: server root certificates (PEM)")
    parser.add_argument("--tls-cert", type=Path, help="mutual TLS: client certificate (PEM)")
    parser.add_argument("--tls-key", type=Path, help="mutual TLS: client private key (PEM)")


def _policy(args: argparse.Namespace) -> AttestationPolicy:
    measurements = args.expect_measurement
    if args.trust_root is not None:
        return AttestationPolicy.simulated_for_tests(args.trust_root, measurements=measurements)
    if not measurements:
        print("veil: warning: no --expect-measurement: accepting any enclave code", file=sys.stderr)
    return AttestationPolicy.production(
        measurements=measurements, allow_any_measurement=not measurements
    )


def _api_key(args: argparse.Namespace) -> str:
    if args.api_key_file is not None:
        try:
            key = str(args.api_key_file.read_text()).strip()
        except OSError as exc:
            raise ConfigError(f"cannot read API key file: {exc.strerror}") from exc
    else:
        key = os.environ.get("VEIL_API_KEY", "").strip()
    if not key:
        raise ConfigError("no API key: pass --api-key-file or set VEIL_API_KEY")
    return key


def client_from_args(args: argparse.Namespace, *, need_key: bool = True) -> Client:
    tls = None
    if args.tls_ca or args.tls_cert:
        tls = TlsOptions(
            root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
            client_certificate=args.tls_cert.read_bytes() if args.tls_cert else None,
            client_key=args.tls_key.read_bytes() if args.tls_key else None,
        )
    return Client(
        args.target,
        api_key=_api_key(args) if need_key else "unused-for-attestation",
        tenant=args.tenant,
        policy=_policy(args),
        suite=Suite.MLKEM768X25519_SHA256_AES256GCM if args.pq else Suite.X25519_SHA256_AES256GCM,
        tls=tls,
        progress=sys.stderr.isatty(),
    )


def _attested_json(enclave: AttestedEnclave) -> dict[str, Any]:
    report = enclave.report
    if isinstance(report, VerifiedSnpReport):
        doc = snp_json(report)
    else:
        doc = {
            "tee": "tdx",
            "measurement": report.mr_td.hex(),
            "rtmrs": [r.hex() for r in report.rtmrs],
            "mr_seam": report.mr_seam.hex(),
            "tcb_status": report.tcb_status.value,
            "report_data": report.report_data.hex(),
            "verified_at": report.verified_at.isoformat(),
        }
    if enclave.gpu is not None:
        doc["gpus"] = len(enclave.gpu.gpus)
    doc.update(
        verified=True,
        key_id=enclave.key_id,
        suites=[s.name for s in enclave.claims.keys],
        valid_until=enclave.valid_until.isoformat(),
    )
    return doc


def _cmd_attest(args: argparse.Namespace) -> int:
    with client_from_args(args, need_key=False) as client:
        enclave = client.attest()
    if args.json:
        print(json.dumps(_attested_json(enclave), indent=2))
    else:
        report = enclave.report
        if isinstance(report, VerifiedSnpReport):
            print(f"verified sev-snp enclave ({report.product.value}, TCB {report.reported_tcb})")
        else:
            print(f"verified tdx enclave (TCB {report.tcb_status.value})")
        print(f"measurement {enclave.measurement}")
        if enclave.insecure_root:
            print("WARNING: verified under a test root, not AMD's: no hardware guarantee")
    return EXIT_OK


def parse_time(value: str) -> datetime:
    """An ISO 8601 time from the command line (UTC when no offset is given)."""
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"{value!r} is not an ISO 8601 time") from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _cmd_models_upload(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        info = client.upload_model(args.file, args.name)
    print(json.dumps({"model": info.ref, "sha256": info.sha256, "size": info.size}))
    return EXIT_OK


def _cmd_models_list(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        models = client.list_models()
    for m in models:
        print(f"{m.ref}\t{m.sha256}\t{m.size}")
    return EXIT_OK


def _cmd_models_delete(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        deleted = client.delete_model(args.model)
    for m in deleted:
        print(f"deleted {m.ref}")
    return EXIT_OK


def _parse_inputs(items: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--input {item!r} must be NAME=FILE.npy")
        try:
            inputs[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--input {name}: cannot read {path} as .npy: {exc}") from exc
    return inputs


def _cmd_infer(args: argparse.Namespace) -> int:
    inputs = _parse_inputs(args.input)
    with client_from_args(args) as client:
        outputs = client.infer(args.model, inputs)
    args.output.mkdir(parents=True, exist_ok=True)
    for name, array in outputs.items():
        path = args.output / f"{name}.npy"
        np.save(path, array, allow_pickle=False)
        print(f"{name}: {array.dtype} {list(array.shape)} -> {path}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="veil", description="Veil: attested, end-to-end sealed AI in enclaves."
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    attest = sub.add_parser("attest", help="verify an enclave's attestation")
    add_client_options_optional_target(attest)
    attest.add_argument("--json", action="store_true")
    attest.set_defaults(func=_cmd_attest)
    attest_sub = attest.add_subparsers(dest="attest_command", metavar="verify")
    add_verify_parser(attest_sub)

    models = sub.add_parser("models", help="upload, list and delete models")
    models_sub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    upload = models_sub.add_parser("upload", help="encrypt and upload an ONNX model")
    add_client_options(upload)
    upload.add_argument("--name", required=True)
    upload.add_argument("file", type=Path)
    upload.set_defaults(func=_cmd_models_upload)
    listing = models_sub.add_parser("list", help="this tenant's models")
    add_client_options(listing)
    listing.set_defaults(func=_cmd_models_list)
    delete = models_sub.add_parser("delete", help="delete NAME or NAME@VERSION")
    add_client_options(delete)
    delete.add_argument("model")
    delete.set_defaults(func=_cmd_models_delete)

    infer = sub.add_parser("infer", help="run sealed inference")
    add_client_options(infer)
    infer.add_argument("--model", required=True, help="NAME or NAME@VERSION")
    infer.add_argument("--input", action="append", required=True, metavar="NAME=FILE.npy")
    infer.add_argument("--output", type=Path, required=True, help="folder for NAME.npy outputs")
    infer.set_defaults(func=_cmd_infer)

    for entry in sorted(metadata.entry_points(group="veil.commands"), key=lambda e: e.name):
        try:
            register: Callable[[Any], None] = entry.load()
        except ImportError as exc:  # installed, but a dependency of it is not
            _add_unavailable(sub, entry.name, f"it cannot load ({exc})")
            continue
        register(sub)
    for name, (distribution, help_text) in ELSEWHERE.items():
        if name not in sub.choices:
            _add_unavailable(
                sub, name, f"it comes with {distribution}: pip install {distribution}", help_text
            )
    return parser


# Commands other distributions add; without them, `veil NAME` says what to install.
ELSEWHERE = {
    "serve": ("veil-ai-enclave", "run an enclave service"),
    "measure": ("veil-ai-enclave", "print the expected measurement (hex)"),
    "watermark": ("veil-ai-watermark", "embed and verify model watermarks"),
}


def _add_unavailable(sub: Any, name: str, why: str, help_text: str | None = None) -> None:
    # Every argument is taken as given (no option parsing): the answer is the same for all.
    parser = sub.add_parser(
        name, help=f"(not installed) {help_text or ''}".rstrip(), add_help=False, prefix_chars="\0"
    )
    parser.add_argument("args", nargs="*")

    def unavailable(_args: argparse.Namespace) -> int:
        print(f"veil: `veil {name}` is not installed here: {why}", file=sys.stderr)
        return EXIT_USAGE

    parser.set_defaults(func=unavailable)


def add_client_options_optional_target(parser: argparse.ArgumentParser) -> None:
    """``veil attest`` takes client options, but ``veil attest verify`` needs no target."""
    add_client_options(parser)
    for action in parser._actions:
        if action.dest == "target":
            action.required = False


def _version() -> str:
    try:
        return f"veil {metadata.version('veil-ai-sdk')}"
    except metadata.PackageNotFoundError:
        return "veil (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.func is _cmd_attest and args.target is None:
        parser.error("veil attest: --target is required (or use `veil attest verify`)")
    handler: Handler = args.func
    try:
        return handler(args)
    except VeilError as exc:
        return _die(str(exc))
    except OSError as exc:
        return _die(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
