"""``veil train``, ``veil train verify`` and ``veil budget`` (registered by entry points)."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from veil.sdk._training import TrainingOutcome, TrainingProgress, verify_training_record
from veil.sdk.attestation._policy import AttestationPolicy
from veil.sdk.errors import ConfigError

__all__ = ["register_budget", "register_train"]

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
    from veil.sdk.cli import add_client_options

    parser = sub.add_parser("train", help="train a model with differential privacy")
    add_client_options(parser)
    for action in parser._actions:
        if action.dest == "target":
            action.required = False  # `veil train verify` needs no target
    parser.add_argument("--dataset", type=Path, help="FILE.npz (x, y), .csv or .parquet")
    parser.add_argument("--label-column", default="", help="csv/parquet label column")
    parser.add_argument("--model", choices=["mlp", "cnn", "logreg"], default="mlp")
    parser.add_argument("--epsilon", type=float, help="target epsilon for this job")
    parser.add_argument(
        "--delta", type=float, default=1e-6, help="this job's delta (they add up per dataset)"
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--spec", type=Path, help="SPEC.toml: model and training options")
    parser.add_argument("--name", default=None, help="register the model as NAME@version")
    parser.add_argument("--json", action="store_true", help="print the certified record")
    parser.set_defaults(func=_train)
    verbs = parser.add_subparsers(dest="train_command", metavar="verify")
    verify = verbs.add_parser("verify", help="verify a saved training record offline")
    verify.add_argument("record", type=Path, help="RECORD.json from `veil train --json`")
    verify.add_argument("--trust-root", type=Path, help="pin this root instead of AMD's")
    verify.add_argument("--expect-measurement", action="append", default=[], metavar="HEX")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_verify)


def register_budget(sub: Any) -> None:
    from veil.sdk.cli import add_client_options

    parser = sub.add_parser("budget", help="show a dataset's privacy budget")
    add_client_options(parser)
    parser.add_argument("--dataset", required=True, metavar="DIGEST", help="dataset SHA-256")
    parser.set_defaults(func=_budget)


def _spec(path: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    if path is None:
        return {}, {}
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    unknown = sorted(set(doc) - _SPEC_MODEL_KEYS - set(_SPEC_TRAIN_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}")
    model = {k: v for k, v in doc.items() if k in _SPEC_MODEL_KEYS}
    train: dict[str, Any] = {}
    for key, kind in _SPEC_TRAIN_KEYS.items():
        if key in doc:
            if not isinstance(doc[key], kind) or isinstance(doc[key], bool):
                raise ConfigError(f"{path}: {key} must be {kind.__name__}")
            train[key] = doc[key]
    return model, train


def _train(args: argparse.Namespace) -> int:
    from veil.sdk.cli import client_from_args

    if args.target is None or args.dataset is None or args.epsilon is None:
        print("veil train: --target, --dataset and --epsilon are required", file=sys.stderr)
        return 2
    model_spec, options = _spec(args.spec)
    if args.name:
        options["name"] = args.name
    with client_from_args(args) as client:
        dataset = client.upload_dataset(args.dataset, label_column=args.label_column)
        job = client.train(
            dataset,
            args.model,
            target_epsilon=args.epsilon,
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
    assert outcome is not None
    if args.json:
        print(json.dumps(outcome.to_json(), indent=2, sort_keys=True))
    else:
        record = outcome.record
        print(
            f"registered {outcome.model.ref}: epsilon {record['epsilon']:.4f} at delta "
            f"{record['delta']:g} ({record['accountant']}), {record['steps']} steps, "
            f"noise multiplier {record['noise_multiplier']:.4f}"
        )
    return 0


def _verify(args: argparse.Namespace) -> int:
    try:
        doc = json.loads(args.record.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {args.record}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{args.record} is not a JSON object")
    if args.trust_root is not None:
        policy = AttestationPolicy.simulated_for_tests(
            args.trust_root, measurements=args.expect_measurement
        )
    else:
        policy = AttestationPolicy.production(
            measurements=args.expect_measurement,
            allow_any_measurement=not args.expect_measurement,
        )
    verified = verify_training_record(doc, policy, now=datetime.now(UTC))
    if args.json:
        print(json.dumps({"verified": True, **dict(verified.record)}, sort_keys=True))
    else:
        print(
            f"verified: model {verified.model_sha256[:16]}… trained on dataset "
            f"{verified.dataset_sha256[:16]}… at epsilon {verified.epsilon:.4f}, delta "
            f"{verified.delta:g}, by code {verified.measurement[:16]}…"
        )
    return 0


def _budget(args: argparse.Namespace) -> int:
    from veil.sdk.cli import client_from_args

    with client_from_args(args) as client:
        info = client.budget(args.dataset)
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "epsilon_budget": info.epsilon_budget,
                "epsilon_spent": info.epsilon_spent,
                "epsilon_remaining": info.epsilon_remaining,
                "delta_budget": info.delta_budget,
                "delta_spent": info.delta_spent,
            }
        )
    )
    return 0
