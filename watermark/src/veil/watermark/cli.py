"""``veil watermark ...``: keygen, embed, reveal, verify.

Registered through the ``veil.commands`` entry point ``watermark = "veil.watermark.cli:register"``.
Exit codes of ``verify``: 0 watermark detected, 1 not detected (or the claim/opening did not
verify), 2 usage error (bad arguments, unreadable or malformed input files).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from veil.sdk.errors import VeilError, WatermarkError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from veil.watermark._keys import WatermarkKey

__all__ = ["main", "register"]

KEY_VERSION = "veil-wm-key-v1"
OPENING_VERSION = "veil-wm-opening-v1"
EXIT_DETECTED, EXIT_NOT_DETECTED, EXIT_USAGE = 0, 1, 2
DEFAULT_THRESHOLD = 1e-9  # the same default as veil.watermark._verify (kept here: import-free)


class _UsageError(Exception):
    pass


class _OneLineParser(argparse.ArgumentParser):
    """A parser whose usage errors are one line on stderr and exit 2 (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\n")


def register(subparsers: Any) -> None:
    """Add ``watermark`` and its subcommands to the ``veil`` parser."""
    parser = subparsers.add_parser("watermark", help="embed and verify model watermarks")
    sub = parser.add_subparsers(
        dest="watermark_command", required=True, parser_class=_OneLineParser
    )

    keygen = sub.add_parser("keygen", help="create an owner signing key and a watermark key")
    keygen.add_argument("--out", required=True, type=Path, help="KEY.json to write (secret)")
    keygen.set_defaults(func=_keygen)

    embed = sub.add_parser("embed", help="mark an ONNX model and write the signed claim")
    embed.add_argument("--model", required=True, type=Path)
    embed.add_argument("--key", required=True, type=Path)
    embed.add_argument("--data", required=True, type=Path, help=".npz with arrays x and y")
    embed.add_argument("--out", required=True, type=Path)
    embed.add_argument("--claim-out", required=True, type=Path)
    embed.add_argument("--bits", type=int, default=128)
    embed.add_argument("--epochs", type=int, default=30)
    embed.add_argument("--trigger-count", type=int, default=32)
    embed.add_argument(
        "--holdout",
        type=float,
        default=0.2,
        help="fraction of the data kept out of the fine-tune to measure the accuracy cost",
    )
    embed.add_argument(
        "--holdout-data",
        type=Path,
        help=".npz (x, y) of rows the model never trained on, to measure the cost instead",
    )
    embed.set_defaults(func=_embed)

    reveal = sub.add_parser("reveal", help="write the commitment opening (no signing key)")
    reveal.add_argument("--key", required=True, type=Path)
    reveal.add_argument("--out", required=True, type=Path)
    reveal.set_defaults(func=_reveal)

    check = sub.add_parser("verify", help="check a suspect model against a claim")
    check.add_argument("--model", required=True, type=Path)
    check.add_argument("--claim", required=True, type=Path)
    check.add_argument(
        "--opening",
        required=True,
        type=Path,
        help="required: OPENING.json from 'reveal' (or the owner's KEY.json); it opens the "
        "claim's commitment",
    )
    check.add_argument("--json", action="store_true", help="print the verdict as JSON")
    check.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    check.add_argument("--trigger", action="store_true", help="also query the trigger set")
    check.add_argument("--report-out", type=Path)
    check.add_argument("--html-out", type=Path)
    check.add_argument("--report-key", type=Path, help="KEY.json whose key signs the report")
    check.set_defaults(func=_verify)


def main(argv: list[str] | None = None) -> int:
    """Run ``watermark`` on its own (``python -m veil.watermark.cli watermark verify ...``)."""
    parser = argparse.ArgumentParser(prog="veil")
    register(parser.add_subparsers(dest="command", required=True))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    code: int = args.func(args)
    return code


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _UsageError(f"cannot read {what} {path}: {exc}") from exc


def _load_key_file(path: Path) -> tuple[Ed25519PrivateKey, WatermarkKey]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from veil.watermark._keys import WatermarkKey

    data = _read_json(path, "key file")
    if not isinstance(data, dict) or data.get("version") != KEY_VERSION:
        raise _UsageError(f"{path} is not a {KEY_VERSION} key file")
    try:
        owner = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(str(data["owner_private_key"])))
        return owner, WatermarkKey.from_dict(data["watermark"])
    except (KeyError, ValueError, WatermarkError) as exc:
        raise _UsageError(f"key file {path} is malformed: {exc}") from exc


def _load_opening(path: Path) -> WatermarkKey:
    from veil.watermark._keys import WatermarkKey

    data = _read_json(path, "opening")
    if not isinstance(data, dict) or data.get("version") not in (KEY_VERSION, OPENING_VERSION):
        raise _UsageError(f"{path} is neither an opening nor a key file")
    try:
        return WatermarkKey.from_dict(data.get("watermark"))
    except WatermarkError as exc:
        raise _UsageError(f"opening {path} is malformed: {exc}") from exc


def _write(path: Path, text: str | bytes, *, secret: bool = False) -> None:
    try:
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        if secret:
            path.chmod(0o600)
    except OSError as exc:
        raise _UsageError(f"cannot write {path}: {exc}") from exc


def _run(args: argparse.Namespace, body: Any) -> int:
    try:
        code: int = body(args)
        return code
    except _UsageError as exc:
        print(f"veil watermark: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:
        print(
            f"veil watermark: needs the {exc.name or 'missing'} package "
            "(install onnx for verify; torch and onnxruntime for embed)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except VeilError as exc:
        print(f"veil watermark: {exc}", file=sys.stderr)
        return EXIT_NOT_DETECTED


def _keygen(args: argparse.Namespace) -> int:
    def body(args: argparse.Namespace) -> int:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from veil.watermark._claim import public_key_bytes
        from veil.watermark._keys import WatermarkKey

        owner = Ed25519PrivateKey.generate()
        raw = owner.private_bytes_raw()
        data = {
            "version": KEY_VERSION,
            "owner_private_key": raw.hex(),
            "owner_public_key": public_key_bytes(owner.public_key()).hex(),
            "watermark": WatermarkKey.generate().to_dict(),
        }
        _write(args.out, json.dumps(data, indent=2), secret=True)
        print(f"wrote {args.out} (keep it secret; share only the claim)")
        return 0

    return _run(args, body)


def _reveal(args: argparse.Namespace) -> int:
    def body(args: argparse.Namespace) -> int:
        _, key = _load_key_file(args.key)
        data = {"version": OPENING_VERSION, "watermark": key.to_dict()}
        _write(args.out, json.dumps(data, indent=2))
        print(f"wrote {args.out}: reveal it only to verify (it lets holders locate the mark)")
        return 0

    return _run(args, body)


def _embed(args: argparse.Namespace) -> int:
    def body(args: argparse.Namespace) -> int:
        import numpy as np

        from veil.watermark._embed import embed_onnx

        owner, key = _load_key_file(args.key)
        try:
            model = args.model.read_bytes()
            with np.load(args.data) as data:
                x, y = data["x"], data["y"]
            held_out = None
            if args.holdout_data is not None:
                with np.load(args.holdout_data) as data:
                    held_out = (data["x"], data["y"])
        except (OSError, KeyError, ValueError) as exc:
            raise _UsageError(f"cannot read model or data: {exc}") from exc
        result = embed_onnx(
            model,
            owner_key=owner,
            key=key,
            x=x,
            y=y,
            now=datetime.now(UTC),
            n_bits=args.bits,
            epochs=args.epochs,
            trigger_count=args.trigger_count,
            holdout=args.holdout,
            holdout_data=held_out,
        )
        _write(args.out, result.model)
        _write(args.claim_out, result.claim.to_json())
        print(
            f"marked {result.claim.layer.describe()}: {result.verdict.matches}/"
            f"{result.verdict.n_bits} bits, p = {result.verdict.p_value:.3g}; accuracy on the "
            f"owner's data {result.accuracy_before:.4f} -> {result.accuracy_after:.4f}"
        )
        report = result.claim.embedding
        if report is not None:
            print(
                f"held-out rows ({report.holdout_rows}, not fine-tuned on): accuracy "
                f"{report.accuracy_before:.4f} -> {report.accuracy_after:.4f} "
                f"(drop {report.drop_points:+.2f} points, in the claim)"
            )
        return 0

    return _run(args, body)


def _verify(args: argparse.Namespace) -> int:
    def body(args: argparse.Namespace) -> int:
        from veil.watermark._claim import WatermarkClaim
        from veil.watermark._report import VerificationReport
        from veil.watermark._verify import onnx_predictor, verify, verify_trigger

        if (args.report_out or args.html_out) and args.report_key is None:
            raise _UsageError("--report-out/--html-out need --report-key to sign the report")
        if not 0 < args.threshold < 1:
            raise _UsageError(f"--threshold {args.threshold} is not in (0, 1)")
        try:
            model = args.model.read_bytes()
            claim_text = args.claim.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise _UsageError(f"cannot read model or claim: {exc}") from exc
        key = _load_opening(args.opening)
        signer = _load_key_file(args.report_key)[0] if args.report_key else None
        claim = WatermarkClaim.from_json(claim_text)
        verdict = verify(model, claim, key, threshold=args.threshold)
        trigger = None
        if args.trigger:
            trigger = verify_trigger(onnx_predictor(model), claim, key, threshold=args.threshold)
        if signer is not None:
            report = VerificationReport.create(
                verdict, claim, signing_key=signer, now=datetime.now(UTC), trigger_verdict=trigger
            )
            if args.report_out:
                _write(args.report_out, report.to_json())
            if args.html_out:
                _write(args.html_out, report.to_html())
        if args.json:
            out: dict[str, Any] = {
                "detected": verdict.detected,
                "p_value": verdict.p_value,
                "matches": verdict.matches,
                "n_bits": verdict.n_bits,
                "bit_error_rate": verdict.bit_error_rate,
                "threshold": verdict.threshold,
                "model_sha256": verdict.model_sha256,
                "layer": claim.layer.describe(),
            }
            if trigger is not None:
                out["trigger"] = {
                    "matches": trigger.matches,
                    "count": trigger.count,
                    "p_value": trigger.p_value,
                    "detected": trigger.detected,
                }
            print(json.dumps(out, indent=2))
        else:
            word = "DETECTED" if verdict.detected else "not detected"
            print(
                f"watermark {word}: {verdict.matches}/{verdict.n_bits} bits match, "
                f"p = {verdict.p_value:.3g} (threshold {verdict.threshold:.3g})"
            )
            if trigger is not None:
                print(f"trigger set: {trigger.matches}/{trigger.count}, p = {trigger.p_value:.3g}")
        return EXIT_DETECTED if verdict.detected else EXIT_NOT_DETECTED

    return _run(args, body)


if __name__ == "__main__":
    sys.exit(main())
