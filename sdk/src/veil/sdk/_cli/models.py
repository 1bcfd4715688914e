"""``veil models upload|list|delete`` and ``veil infer``: models on an enclave, sealed inference."""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from veil.sdk._cli._framework import (
    Outcome,
    UsageError,
    add_client_options,
    add_command,
    add_group,
    check_readable,
    client_from_args,
    deprecated_alias,
    read_input,
    require,
    write_output,
)
from veil.sdk._models import ModelInfo
from veil.sdk.errors import ConfigError, ConfigFailure

__all__ = ["register_infer", "register_models"]


def register_models(sub: Any) -> None:
    verbs = add_group(sub, "models", help="upload, list and delete this tenant's models")
    upload = add_command(
        verbs, "upload", _upload, help="encrypt and upload an ONNX model (registers NAME@N)"
    )
    add_client_options(upload)
    upload.add_argument("--model", metavar="NAME", help="the name to register it under (required)")
    deprecated_alias(upload, "--name", dest="model", use="--model")
    upload.add_argument("file", type=Path, metavar="FILE.onnx", help="the ONNX model")

    listing = add_command(verbs, "list", _list, help="this tenant's models")
    add_client_options(listing)

    delete = add_command(verbs, "delete", _delete, help="delete a model, or one version of it")
    add_client_options(delete)
    delete.add_argument("--model", metavar="NAME[@N]", help="what to delete (required)")
    delete.add_argument("positional", nargs="?", metavar="NAME[@N]", help=argparse.SUPPRESS)


def register_infer(sub: Any) -> None:
    infer = add_command(
        sub,
        "infer",
        _infer,
        help="run sealed inference",
        description="Run sealed inference: inputs are .npy files, outputs are written as "
        "OUT/NAME.npy.",
    )
    add_client_options(infer)
    infer.add_argument("--model", required=True, metavar="NAME[@N]", help="the model to run")
    infer.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="NAME=FILE.npy",
        help="an input tensor (repeatable)",
    )
    infer.add_argument("--out", type=Path, metavar="DIR", help="folder for NAME.npy (required)")
    deprecated_alias(infer, "--output", dest="out", use="--out")


def _model_json(m: ModelInfo) -> dict[str, Any]:
    return {"model": m.ref, "sha256": m.sha256, "size": m.size}


def _upload(args: argparse.Namespace) -> Outcome:
    name = require(args, "model", "--model")
    model = check_readable(args.file, "model")
    with client_from_args(args) as client:
        info = client.upload_model(model, name)
    return Outcome(
        _model_json(info), f"uploaded {info.ref} (sha256 {info.sha256[:16]}…, {info.size} bytes)"
    )


def _list(args: argparse.Namespace) -> Outcome:
    with client_from_args(args) as client:
        models = client.list_models()
    lines = [f"{m.ref}\t{m.sha256}\t{m.size}" for m in models]
    return Outcome({"models": [_model_json(m) for m in models]}, "\n".join(lines))


def _delete(args: argparse.Namespace) -> Outcome:
    if args.model is None and args.positional is not None:
        args.model = args.positional  # the old spelling: `veil models delete NAME`
    model = require(args, "model", "--model")
    with client_from_args(args) as client:
        deleted = client.delete_model(model)
    return Outcome(
        {"deleted": [_model_json(m) for m in deleted]},
        "\n".join(f"deleted {m.ref}" for m in deleted),
    )


def _inputs(items: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--input {item!r} must be NAME=FILE.npy")
        raw = read_input(Path(path), f"--input {name}")
        try:
            inputs[name] = np.load(io.BytesIO(raw), allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ConfigError(
                f"--input {name}: {path} is not a .npy array ({exc})",
                reason=ConfigFailure.MALFORMED,
            ) from None
    return inputs


def _infer(args: argparse.Namespace) -> Outcome:
    out: Path = require(args, "out", "--out")
    inputs = _inputs(args.input)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is not a folder")
    with client_from_args(args) as client:
        outputs = client.infer(args.model, inputs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"--out {out}: cannot create ({exc.strerror})", reason=ConfigFailure.UNREADABLE
        ) from None
    written = []
    for name, array in outputs.items():
        path = out / f"{name}.npy"
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        write_output(path, buffer.getvalue(), "--out", mode=0o644)
        written.append(
            {"name": name, "dtype": str(array.dtype), "shape": list(array.shape), "file": str(path)}
        )
    return Outcome(
        {"model": args.model, "outputs": written},
        "\n".join(f"{w['name']}: {w['dtype']} {w['shape']} -> {w['file']}" for w in written),
    )
