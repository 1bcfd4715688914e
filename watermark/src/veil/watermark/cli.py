"""``veil watermark keygen|embed|reveal|verify``: mark a model, check a suspect one.

Registered through the ``veil.commands`` entry point ``watermark = "veil.watermark.cli:register"``
into the SDK's one command line (``veil.sdk.cli``: one error path, one exit-code table).
``verify`` exits 0 when the watermark is detected and 1 when it is not, or when the claim is
malformed or does not verify; 2 is usage (bad options, a missing or unreadable file, a key or
opening file that is not one).
"""

from __future__ import annotations

import argparse
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from veil.sdk.cli import (
    EXIT_OK,
    EXIT_REFUSED,
    Outcome,
    UsageError,
    add_command,
    add_group,
    fraction,
    main,
    positive_int,
    read_input,
    read_json,
    read_text,
    value_type,
    write_output,
)
from veil.sdk.errors import ConfigError, ConfigFailure, WatermarkError
from veil.watermark._defaults import DEFAULT_EMBED_EPOCHS

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from veil.watermark._keys import WatermarkKey

__all__ = ["main", "register"]  # main: veil.sdk.cli.main, for ``python -m veil.watermark.cli``

KEY_VERSION = "veil-wm-key-v1"
OPENING_VERSION = "veil-wm-opening-v1"
DEFAULT_THRESHOLD = 1e-9  # the same default as veil.watermark._verify (kept here: import-free)


_holdout = value_type(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
_count = value_type(int, lambda v: v >= 0, "a whole number >= 0")


def register(subparsers: Any) -> None:
    """Add ``watermark`` and its subcommands to the ``veil`` parser."""
    sub = add_group(subparsers, "watermark", help="embed and verify model watermarks")

    keygen = add_command(
        sub, "keygen", _keygen, help="create an owner signing key and a watermark key"
    )
    keygen.add_argument("--out", required=True, type=Path, help="KEY.json to write (secret)")

    embed = add_command(sub, "embed", _embed, help="mark an ONNX model and write the signed claim")
    embed.add_argument("--model", required=True, type=Path, metavar="FILE", help="ONNX to mark")
    embed.add_argument("--key", required=True, type=Path, metavar="KEY", help="KEY.json")
    embed.add_argument(
        "--data", required=True, type=Path, metavar="FILE", help=".npz with arrays x and y"
    )
    embed.add_argument("--out", required=True, type=Path, metavar="FILE", help="marked ONNX")
    embed.add_argument(
        "--claim-out", required=True, type=Path, metavar="FILE", help="the signed claim (JSON)"
    )
    embed.add_argument("--bits", type=positive_int, default=128, help="watermark length")
    embed.add_argument(
        "--epochs", type=positive_int, default=DEFAULT_EMBED_EPOCHS, help="fine-tuning epochs"
    )
    embed.add_argument(
        "--trigger-count", type=_count, default=32, help="trigger-set size (0: none)"
    )
    embed.add_argument(
        "--holdout",
        type=_holdout,
        default=0.2,
        help="fraction of the data kept out of the fine-tune to measure the accuracy cost",
    )
    embed.add_argument(
        "--holdout-data",
        type=Path,
        metavar="FILE",
        help=".npz (x, y) of rows the model never trained on, to measure the cost instead",
    )

    reveal = add_command(
        sub, "reveal", _reveal, help="write the commitment opening (no signing key)"
    )
    reveal.add_argument("--key", required=True, type=Path, metavar="KEY", help="KEY.json")
    reveal.add_argument("--out", required=True, type=Path, metavar="FILE", help="OPENING.json")

    check = add_command(sub, "verify", _verify, help="check a suspect model against a claim")
    check.add_argument("--model", required=True, type=Path, metavar="FILE", help="suspect ONNX")
    check.add_argument("--claim", required=True, type=Path, metavar="FILE", help="claim (JSON)")
    check.add_argument(
        "--opening",
        required=True,
        type=Path,
        help="required: OPENING.json from 'reveal' (or the owner's KEY.json); it opens the "
        "claim's commitment",
    )
    check.add_argument(
        "--threshold",
        type=fraction,
        default=DEFAULT_THRESHOLD,
        help="detected when the p-value is below this",
    )
    check.add_argument("--trigger", action="store_true", help="also query the trigger set")
    check.add_argument("--report-out", type=Path, metavar="FILE", help="signed report (JSON)")
    check.add_argument("--html-out", type=Path, metavar="FILE", help="the report as HTML")
    check.add_argument("--report-key", type=Path, metavar="KEY", help="KEY.json that signs it")


def _load_key_file(path: Path, label: str = "--key") -> tuple[Ed25519PrivateKey, WatermarkKey]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from veil.watermark._keys import WatermarkKey

    data = _key_json(path, label)
    if not isinstance(data, dict) or data.get("version") != KEY_VERSION:
        raise UsageError(f"{label} {path} is not a {KEY_VERSION} key file")
    try:
        owner = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(str(data["owner_private_key"])))
        return owner, WatermarkKey.from_dict(data["watermark"])
    except (KeyError, ValueError, WatermarkError) as exc:
        raise UsageError(
            f"{label} {path} is malformed: {exc}", reason=ConfigFailure.MALFORMED
        ) from None


def _key_json(path: Path, label: str) -> Any:
    """A key or opening file: one that is not JSON is the wrong file given (usage, exit 2)."""
    try:
        return read_json(path, label)
    except UsageError:
        raise
    except ConfigError as exc:
        raise UsageError(str(exc), reason=ConfigFailure.MALFORMED) from None


def _load_opening(path: Path) -> WatermarkKey:
    from veil.watermark._keys import WatermarkKey

    data = _key_json(path, "--opening")
    if not isinstance(data, dict) or data.get("version") not in (KEY_VERSION, OPENING_VERSION):
        raise UsageError(f"--opening {path} is neither an opening nor a key file")
    try:
        return WatermarkKey.from_dict(data.get("watermark"))
    except WatermarkError as exc:
        raise UsageError(
            f"--opening {path} is malformed: {exc}", reason=ConfigFailure.MALFORMED
        ) from None


def _npz(path: Path, label: str) -> tuple[Any, Any]:
    import numpy as np

    raw = read_input(path, label)
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            return data["x"], data["y"]
    except (OSError, KeyError, ValueError, EOFError) as exc:
        raise ConfigError(
            f"{label} {path} is not an .npz with arrays x and y ({exc})",
            reason=ConfigFailure.MALFORMED,
        ) from None


def _keygen(args: argparse.Namespace) -> Outcome:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from veil.watermark._claim import public_key_bytes
    from veil.watermark._keys import WatermarkKey

    if args.out.exists():
        raise UsageError(f"--out {args.out} exists: refusing to overwrite a key")
    owner = Ed25519PrivateKey.generate()
    public = public_key_bytes(owner.public_key()).hex()
    data = {
        "version": KEY_VERSION,
        "owner_private_key": owner.private_bytes_raw().hex(),
        "owner_public_key": public,
        "watermark": WatermarkKey.generate().to_dict(),
    }
    write_output(args.out, json.dumps(data, indent=2), "--out", mode=0o600)
    return Outcome(
        {"key": str(args.out), "owner_public_key": public},
        f"wrote {args.out} (keep it secret; share only the claim)",
    )


def _reveal(args: argparse.Namespace) -> Outcome:
    _, key = _load_key_file(args.key)
    data = {"version": OPENING_VERSION, "watermark": key.to_dict()}
    write_output(args.out, json.dumps(data, indent=2), "--out", mode=0o644)
    return Outcome(
        {"opening": str(args.out)},
        f"wrote {args.out}: reveal it only to verify (it lets holders locate the mark)",
    )


def _embed(args: argparse.Namespace) -> Outcome:
    from veil.watermark._embed import embed_onnx

    owner, key = _load_key_file(args.key)
    model = read_input(args.model, "--model")
    x, y = _npz(args.data, "--data")
    held_out = None if args.holdout_data is None else _npz(args.holdout_data, "--holdout-data")
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
    write_output(args.out, result.model, "--out", mode=0o644)
    write_output(args.claim_out, result.claim.to_json(), "--claim-out", mode=0o644)
    verdict = result.verdict
    lines = [
        f"marked {result.claim.layer.describe()}: {verdict.matches}/{verdict.n_bits} bits, "
        f"p = {verdict.p_value:.3g}; accuracy on the owner's data "
        f"{result.accuracy_before:.4f} -> {result.accuracy_after:.4f}"
    ]
    doc: dict[str, Any] = {
        "model": str(args.out),
        "claim": str(args.claim_out),
        "layer": result.claim.layer.describe(),
        "matches": verdict.matches,
        "n_bits": verdict.n_bits,
        "p_value": verdict.p_value,
        "accuracy_before": result.accuracy_before,
        "accuracy_after": result.accuracy_after,
    }
    report = result.claim.embedding
    if report is not None:
        lines.append(
            f"held-out rows ({report.holdout_rows}, not fine-tuned on): accuracy "
            f"{report.accuracy_before:.4f} -> {report.accuracy_after:.4f} "
            f"(drop {report.drop_points:+.2f} points, in the claim)"
        )
        doc["holdout"] = {
            "rows": report.holdout_rows,
            "accuracy_before": report.accuracy_before,
            "accuracy_after": report.accuracy_after,
            "drop_points": report.drop_points,
        }
    return Outcome(doc, "\n".join(lines))


def _verify(args: argparse.Namespace) -> Outcome:
    from veil.watermark._claim import WatermarkClaim
    from veil.watermark._report import VerificationReport
    from veil.watermark._verify import onnx_predictor, verify, verify_trigger

    if (args.report_out or args.html_out) and args.report_key is None:
        raise UsageError("--report-out/--html-out need --report-key to sign the report")
    model = read_input(args.model, "--model")
    claim_text = read_text(args.claim, "--claim")
    key = _load_opening(args.opening)
    signer = _load_key_file(args.report_key, "--report-key")[0] if args.report_key else None
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
            write_output(args.report_out, report.to_json(), "--report-out", mode=0o644)
        if args.html_out:
            write_output(args.html_out, report.to_html(), "--html-out", mode=0o644)
    doc: dict[str, Any] = {
        "detected": verdict.detected,
        "p_value": verdict.p_value,
        "matches": verdict.matches,
        "n_bits": verdict.n_bits,
        "bit_error_rate": verdict.bit_error_rate,
        "threshold": verdict.threshold,
        "model_sha256": verdict.model_sha256,
        "layer": claim.layer.describe(),
    }
    word = "DETECTED" if verdict.detected else "not detected"
    lines = [
        f"watermark {word}: {verdict.matches}/{verdict.n_bits} bits match, "
        f"p = {verdict.p_value:.3g} (threshold {verdict.threshold:.3g})"
    ]
    if trigger is not None:
        doc["trigger"] = {
            "matches": trigger.matches,
            "count": trigger.count,
            "p_value": trigger.p_value,
            "detected": trigger.detected,
        }
        lines.append(f"trigger set: {trigger.matches}/{trigger.count}, p = {trigger.p_value:.3g}")
    return Outcome(doc, "\n".join(lines), EXIT_OK if verdict.detected else EXIT_REFUSED)


if __name__ == "__main__":
    raise SystemExit(main())
