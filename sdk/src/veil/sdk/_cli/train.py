"""``veil train`` (DP-SGD in an enclave), ``veil train verify`` (offline), ``veil budget``."""

from __future__ import annotations

import argparse
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from veil.sdk._cli._framework import (
    Outcome,
    UsageError,
    add_client_options,
    add_command,
    add_trust_options,
    attestation_policy,
    check_readable,
    client_from_args,
    deprecated_alias,
    fraction,
    hex_bytes,
    iso_time,
    positive_float,
    positive_int,
    read_json,
    read_text,
    require,
    write_output,
)
from veil.sdk._operations import DATASET_FORMATS
from veil.sdk._training import TrainingOutcome, TrainingProgress, verify_training_record
from veil.sdk.errors import ConfigError, ConfigFailure

__all__ = ["register_budget", "register_train"]

ARCHITECTURES = ("mlp", "cnn", "logreg")
DEFAULT_NAME = "trained"  # the SDK's default for Client.train(name=...)
_SPEC_MODEL_KEYS = {"hidden", "channels", "activation", "norm", "input_shape"}
_SPEC_TRAIN_KEYS = {
    "batch_size": int,
    "learning_rate": float,
    "max_grad_norm": float,
    "optimizer": str,
    "accountant": str,
    "noise": str,
    "seed": int,
    "name": str,
}


def register_train(sub: Any) -> None:
    parser = add_command(
        sub,
        "train",
        _train,
        help="train a model with differential privacy",
        description="Upload a dataset sealed, train on it with DP-SGD inside the enclave, "
        "register the model; `veil train verify RECORD.json` checks a saved record offline.",
    )
    add_client_options(parser)
    job = parser.add_argument_group("the job")
    job.add_argument(
        "--dataset", type=Path, metavar="FILE", help="FILE.npz (x, y), .csv or .parquet (required)"
    )
    job.add_argument(
        "--format",
        choices=DATASET_FORMATS,
        help="the dataset's format (default: from its extension)",
    )
    job.add_argument("--label-column", default="", help="csv/parquet label column")
    job.add_argument("--arch", choices=ARCHITECTURES, help="model architecture (default: mlp)")
    job.add_argument(
        "--model", metavar="NAME", help=f"register the model as NAME@N (default: {DEFAULT_NAME})"
    )
    deprecated_alias(parser, "--name", dest="model", use="--model")
    job.add_argument(
        "--epsilon", type=positive_float, metavar="E", help="this job's target epsilon (required)"
    )
    job.add_argument(
        "--delta",
        type=fraction,
        metavar="D",
        help="this job's delta (default: its share of the dataset's delta, in proportion to "
        "its epsilon)",
    )
    job.add_argument("--epochs", type=positive_int, default=5, metavar="N", help="passes")
    job.add_argument("--spec", type=Path, metavar="SPEC.toml", help="model and training options")
    mark = parser.add_argument_group("watermark the model while it trains (docs/WATERMARK.md)")
    mark.add_argument(
        "--watermark",
        type=Path,
        metavar="KEY.json",
        help="the owner's `veil watermark keygen` file: embed its mark during DP training "
        "(costs no epsilon)",
    )
    mark.add_argument(
        "--watermark-strength",
        type=positive_float,
        metavar="S",
        help="the regulariser's strength (default: the enclave's, 20)",
    )
    mark.add_argument(
        "--claim-out", type=Path, metavar="FILE", help="write the signed watermark claim here"
    )
    verbs = parser.add_subparsers(dest="train_command", metavar="verify")
    verify = add_command(verbs, "verify", _verify, help="verify a saved training record offline")
    verify.add_argument("record", type=Path, metavar="RECORD.json", help="from veil train --json")
    add_trust_options(verify, what="the record's evidence")
    verify.add_argument(
        "--at", type=iso_time, metavar="ISO8601", help="verify as of this time (default: now)"
    )


def register_budget(sub: Any) -> None:
    parser = add_command(sub, "budget", _budget, help="show a dataset's privacy budget")
    add_client_options(parser)
    parser.add_argument(
        "--dataset",
        required=True,
        type=hex_bytes(32),
        metavar="SHA256",
        help="the dataset's digest (veil train --json prints it as dataset_sha256)",
    )


def _spec(path: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    if path is None:
        return {}, {}
    try:
        doc = tomllib.loads(read_text(path, "--spec"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--spec {path}: {exc}", reason=ConfigFailure.MALFORMED) from None
    unknown = sorted(set(doc) - _SPEC_MODEL_KEYS - set(_SPEC_TRAIN_KEYS))
    if unknown:
        raise ConfigError(f"--spec {path}: unknown key(s) {unknown}")
    model = {k: v for k, v in doc.items() if k in _SPEC_MODEL_KEYS}
    train: dict[str, Any] = {}
    for key, kind in _SPEC_TRAIN_KEYS.items():
        if key in doc:
            if not isinstance(doc[key], kind) or isinstance(doc[key], bool):
                raise ConfigError(f"--spec {path}: {key} must be {kind.__name__}")
            train[key] = doc[key]
    return model, train


def _dataset_format(args: argparse.Namespace, dataset: Path) -> str:
    if args.format is not None:
        return str(args.format)
    suffix = dataset.suffix.lower().lstrip(".")
    if suffix not in DATASET_FORMATS:
        raise UsageError(
            f"cannot tell the format of --dataset {dataset} from its extension: name it .npz, "
            ".csv or .parquet, or pass --format",
            reason=ConfigFailure.UNSUPPORTED,
        )
    return suffix


def _train(args: argparse.Namespace) -> Outcome:
    dataset: Path = require(args, "dataset", "--dataset")
    epsilon: float = require(args, "epsilon", "--epsilon")
    if args.arch is None and args.model in ARCHITECTURES:  # what `--model mlp` once meant
        raise UsageError(
            f"--model names the model to register; give the architecture as --arch {args.model}"
        )
    data_format = _dataset_format(args, check_readable(dataset, "--dataset"))
    model_spec, options = _spec(args.spec)
    if args.model is not None:
        options["name"] = args.model
    if args.watermark is None and (args.claim_out or args.watermark_strength) is not None:
        raise UsageError("--claim-out and --watermark-strength need --watermark KEY.json")
    if args.watermark is not None:
        options["watermark"] = check_readable(args.watermark, "--watermark")
        options["watermark_strength"] = args.watermark_strength or 0.0
    with client_from_args(args) as client:
        uploaded = client.upload_dataset(
            dataset, format=data_format, label_column=args.label_column
        )
        job = client.train(
            uploaded,
            args.arch or "mlp",
            target_epsilon=epsilon,
            delta=args.delta,
            epochs=args.epochs,
            spec=model_spec,
            **options,
        )
        outcome: TrainingOutcome | None = None
        for event in job.stream():
            if isinstance(event, TrainingProgress):
                if not args.json and not sys.stderr.isatty():
                    print(
                        f"step {event.step}/{event.total_steps} loss {event.loss:.4f} "
                        f"epsilon {event.epsilon:.3f}",
                        file=sys.stderr,
                    )
            else:
                outcome = event
    assert outcome is not None  # the stream ends with the outcome or raises
    record = outcome.record
    text = (
        f"registered {outcome.model.ref}: epsilon {record['epsilon']:.4f} at delta "
        f"{record['delta']:g} ({record['accountant']}), {record['steps']} steps, "
        f"noise multiplier {record['noise_multiplier']:.4f}; dataset {record['dataset_sha256']}"
    )
    mark = outcome.watermark
    if mark is not None:  # the claim goes to --claim-out: --json prints the verifiable record
        if args.claim_out is not None:
            write_output(args.claim_out, mark.claim_json, "--claim-out")
        text += f"\nwatermark: {mark.matches}/{mark.n_bits} bits, p = {mark.p_value:.3g}"
    return Outcome(outcome.to_json(), text)


def _verify(args: argparse.Namespace) -> Outcome:
    doc = read_json(args.record, "record")
    if not isinstance(doc, dict):
        raise ConfigError(
            f"record {args.record} is not a JSON object", reason=ConfigFailure.MALFORMED
        )
    verified = verify_training_record(
        doc, attestation_policy(args), now=args.at or datetime.now(UTC)
    )
    return Outcome(
        {"verified": True, **dict(verified.record)},
        f"verified: model {verified.model_sha256[:16]}… trained on dataset "
        f"{verified.dataset_sha256[:16]}… at epsilon {verified.epsilon:.4f}, delta "
        f"{verified.delta:g}, by code {verified.measurement[:16]}…",
    )


def _budget(args: argparse.Namespace) -> Outcome:
    digest = args.dataset.hex()
    with client_from_args(args) as client:
        info = client.budget(digest)
    doc = {
        "dataset": digest,
        "epsilon_budget": info.epsilon_budget,
        "epsilon_spent": info.epsilon_spent,
        "epsilon_remaining": info.epsilon_remaining,
        "delta_budget": info.delta_budget,
        "delta_spent": info.delta_spent,
        "delta_remaining": info.delta_remaining,
        "limited_by": info.limited_by,
    }
    return Outcome(
        doc,
        f"dataset {digest[:16]}…: epsilon {info.epsilon_remaining:g} of "
        f"{info.epsilon_budget:g} left, delta {info.delta_remaining:g} of "
        f"{info.delta_budget:g} left; the next job is limited by {info.limited_by}",
    )
