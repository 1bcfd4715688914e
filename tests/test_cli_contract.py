"""The ``veil`` contract, over every command: the usual mistakes get one line and the documented
exit code (0 ok, 1 refused -- malformed inputs included --, 2 usage), ``--json`` gets one error
shape, every option says what it does, and docs/CLI.md lists exactly what the parser has.

Runs ``veil.sdk.cli.main`` in this process (the subprocess tests in test_cli.py cover the entry
point itself); the environment is cleared of ``VEIL_*`` so a developer's own settings do not leak.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from veil.sdk._cli._reference import render_reference, section
from veil.sdk.cli import build_parser, main

CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "CLI.md"
CLOSED = "127.0.0.1:1"  # nothing listens there: a refused connection, at once


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    code: int
    message: str  # a part of the one line on stderr
    reason: str  # the "reason" of the JSON error
    env: tuple[tuple[str, str], ...] = ()
    json_ok: bool = True  # the command takes --json


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, vectors: Path) -> dict[str, str]:
    d = tmp_path_factory.mktemp("contract")
    turin = (vectors / "sev-snp/routex-lua/report-turin.bin").read_bytes()
    made = {
        "junk": b"\x99" * 300,
        "truncated": turin[:1180],
        "garbage.pem": b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
        "key": b"veil_key\n",
        "empty.key": b"\n",
        "x.npy": b"not an npy",
        "model.onnx": b"not onnx",
        "data.npz": b"not an npz",
        "record.json": b'{"model": "mlp", "epsilon": 1.0',  # truncated JSON
        "list.json": b"[]",
        "claim.json": b'{"version": "veil-wm-claim-v1"}',
        "opening.json": b'{"version": "veil-wm-opening-v1", "watermark": {}}',
        "policy.toml": b"version = 3\n",
        "spec.toml": b"hidden = [16",
        "data.txt": b"1,2,3\n",
    }
    for name, data in made.items():
        (d / name).write_bytes(data)
    (d / "folder").mkdir()
    (d / "export").mkdir()  # an export folder with nothing in it: malformed
    (d / "data-dir").mkdir()
    out = {name: str(d / name) for name in [*made, "folder", "export", "data-dir"]}
    out["absent"] = str(d / "absent")
    out["chain"] = str(vectors / "sev-snp/routex-lua/vcek-chain-turin.pem")
    out["report"] = str(vectors / "sev-snp/routex-lua/report-turin.bin")
    out["root"] = str(d / "root.pem")
    (d / "root.pem").write_bytes((vectors / "sev-snp/routex-lua/vcek-chain-turin.pem").read_bytes())
    assert main(["watermark", "keygen", "--out", str(d / "wm.json")]) == 0
    out["wm"] = str(d / "wm.json")
    assert main(["policy", "keygen", "--out", str(d / "op.key")]) == 0
    out["op"] = str(d / "op.key")
    return out


def cases(f: dict[str, str]) -> dict[str, Case]:
    """The usual mistakes, per command (ids are ``command: mistake``)."""
    conn = ("--target", CLOSED, "--api-key-file", f["key"])
    dig = "ab" * 32
    at = ("attest", "--target", CLOSED)
    av = ("attest", "verify")
    up = ("models", "upload", *conn)
    inf = ("infer", *conn, "--model", "m")
    tr = ("train", *conn, "--dataset", f["data.npz"])
    emb = ("watermark", "embed", "--model", f["model.onnx"], "--key", f["wm"], "--data")
    emb_out = ("--out", f["absent"], "--claim-out", f["absent"])
    wv = ("watermark", "verify", "--claim", f["claim.json"])
    m = ("--model", f["model.onnx"])
    op = ("--opening", f["opening.json"])
    snp = (*av, f["report"], "--certs")
    serve = ("serve", "--data-dir", f["data-dir"])
    return {
        # veil (no command) and unknown commands
        "veil: no command": Case((), 2, "required: COMMAND", "invalid_value", json_ok=False),
        "veil: unknown command": Case(("frobnicate",), 2, "invalid choice", "invalid_value"),
        # veil attest
        "attest: no target": Case(("attest",), 2, "no enclave address", "missing_value"),
        "attest: bad target": Case(
            ("attest", "--target", "a:b:c"), 2, "HOST[:PORT]", "invalid_value"
        ),
        "attest: bad target env": Case(
            ("attest",), 2, "$VEIL_TARGET 'x y'", "invalid_value", (("VEIL_TARGET", "x y"),)
        ),
        "attest: missing trust root": Case(
            (*at, "--trust-root", f["absent"]), 2, "no such file", "missing_file"
        ),
        "attest: trust root env missing": Case(
            at, 2, "$VEIL_TRUST_ROOT", "missing_file", (("VEIL_TRUST_ROOT", f["absent"]),)
        ),
        "attest: trust root unreadable": Case(
            (*at, "--trust-root", f["folder"]), 2, "cannot read", "unreadable"
        ),
        "attest: trust root garbage": Case(
            (*at, "--trust-root", f["garbage.pem"]), 2, "is not a root certificate", "malformed"
        ),
        "attest: bad measurement": Case(
            (*at, "--expect-measurement", "abc"), 2, "must be hex", "invalid_value"
        ),
        "attest: short measurement": Case(
            (*at, "--expect-measurement", "ab" * 4), 2, "must be 48 bytes", "invalid_value"
        ),
        "attest: unreachable": Case(at, 1, "UNAVAILABLE", "unavailable"),
        # veil attest verify
        "attest verify: missing evidence": Case((*av, f["absent"]), 2, "evidence", "missing_file"),
        "attest verify: unreadable evidence": Case(
            (*av, f["folder"]), 2, "cannot read", "unreadable"
        ),
        "attest verify: truncated snp": Case(
            (*av, f["truncated"], "--certs", f["chain"]), 1, "1180", "malformed"
        ),
        "attest verify: truncated snp, no certs": Case(
            (*av, f["truncated"]), 2, "needs --certs", "invalid_value"
        ),
        "attest verify: junk": Case((*av, f["junk"]), 1, "neither a SEV-SNP report", "malformed"),
        "attest verify: bad --at": Case(
            (*av, f["report"], "--at", "bogus"), 2, "ISO 8601", "invalid_value"
        ),
        "attest verify: bad --tee": Case(
            (*av, f["report"], "--tee", "sgx"), 2, "invalid choice", "invalid_value"
        ),
        "attest verify: missing certs file": Case(
            (*snp, f["absent"]), 2, "--certs", "missing_file"
        ),
        "attest verify: garbage certs": Case(
            (*snp, f["garbage.pem"]), 1, "certificate", "malformed"
        ),
        "attest verify: malformed policy": Case(
            (*snp, f["chain"], "--policy", f["policy.toml"]), 1, "version", "invalid_value"
        ),
        "attest verify: missing policy": Case(
            (*snp, f["chain"], "--policy", f["absent"]), 2, "--policy", "missing_file"
        ),
        # veil models
        "models: no action": Case(("models",), 2, "required: COMMAND", "invalid_value"),
        "models upload: missing file": Case(
            (*up, "--model", "m", f["absent"]), 2, "no such file", "missing_file"
        ),
        "models upload: no name": Case((*up, f["model.onnx"]), 2, "--model", "missing_value"),
        "models upload: no key": Case(
            ("models", "upload", "--target", CLOSED, "--model", "m", f["model.onnx"]),
            2,
            "no API key",
            "missing_value",
        ),
        "models upload: empty key file": Case(
            (
                "models",
                "upload",
                "--target",
                CLOSED,
                "--api-key-file",
                f["empty.key"],
                "--model",
                "m",
                f["model.onnx"],
            ),
            2,
            "is empty",
            "missing_value",
        ),
        "models upload: key file env missing": Case(
            ("models", "upload", "--target", CLOSED, "--model", "m", f["model.onnx"]),
            2,
            "$VEIL_API_KEY_FILE",
            "missing_file",
            (("VEIL_API_KEY_FILE", f["absent"]),),
        ),
        "models list: unreachable": Case(
            ("models", "list", *conn), 1, "UNAVAILABLE", "unavailable"
        ),
        "models list: tls key without cert": Case(
            ("models", "list", *conn, "--tls-key", f["key"]), 2, "go together", "invalid_value"
        ),
        "models delete: no model": Case(("models", "delete", *conn), 2, "--model", "missing_value"),
        # veil infer
        "infer: missing input": Case(
            (*inf, "--input", f"x={f['absent']}", "--out", f["folder"]),
            2,
            "no such file",
            "missing_file",
        ),
        "infer: bad input spec": Case(
            (*inf, "--input", "x", "--out", f["folder"]), 2, "NAME=FILE.npy", "invalid_value"
        ),
        "infer: malformed npy": Case(
            (*inf, "--input", f"x={f['x.npy']}", "--out", f["folder"]),
            1,
            "is not a .npy array",
            "malformed",
        ),
        "infer: out is a file": Case(
            (*inf, "--input", f"x={f['x.npy']}", "--out", f["key"]), 1, "is not a .npy", "malformed"
        ),
        "infer: no out": Case((*inf, "--input", f"x={f['x.npy']}"), 2, "--out", "missing_value"),
        # veil train
        "train: zero epochs": Case(
            (*tr, "--epsilon", "1", "--epochs", "0"),
            2,
            "--epochs: must be a whole number >= 1",
            "invalid_value",
        ),
        "train: negative epsilon": Case(
            (*tr, "--epsilon", "-1"), 2, "--epsilon: must be a number > 0", "invalid_value"
        ),
        "train: delta of 1": Case(
            (*tr, "--epsilon", "1", "--delta", "1"),
            2,
            "--delta: must be a number between 0 and 1",
            "invalid_value",
        ),
        "train: no epsilon": Case(tr, 2, "--epsilon", "missing_value"),
        "train: missing dataset": Case(
            ("train", *conn, "--dataset", f["absent"], "--epsilon", "1"),
            2,
            "no such file",
            "missing_file",
        ),
        "train: unknown extension": Case(
            ("train", *conn, "--dataset", f["data.txt"], "--epsilon", "1"),
            2,
            "or pass --format",
            "unsupported",
        ),
        "train: architecture as --model": Case(
            (*tr, "--epsilon", "1", "--model", "cnn"), 2, "--arch cnn", "invalid_value"
        ),
        "train: malformed spec": Case(
            (*tr, "--epsilon", "1", "--spec", f["spec.toml"]), 1, "--spec", "malformed"
        ),
        "train verify: missing record": Case(
            ("train", "verify", f["absent"]), 2, "no such file", "missing_file"
        ),
        "train verify: truncated record": Case(
            ("train", "verify", f["record.json"]), 1, "is not JSON", "malformed"
        ),
        "train verify: not an object": Case(
            ("train", "verify", f["list.json"]), 1, "not a JSON object", "malformed"
        ),
        "train verify: bad --at": Case(
            ("train", "verify", f["record.json"], "--at", "soon"), 2, "ISO 8601", "invalid_value"
        ),
        # veil budget
        "budget: not a digest": Case(
            ("budget", *conn, "--dataset", "xyz"), 2, "must be hex", "invalid_value"
        ),
        "budget: unreachable": Case(
            ("budget", *conn, "--dataset", dig), 1, "UNAVAILABLE", "unavailable"
        ),
        # veil audit
        "audit: no action": Case(("audit",), 2, "required: COMMAND", "invalid_value"),
        "audit export: bad --since": Case(
            ("audit", "export", *conn, "--out", f["absent"], "--since", "bogus"),
            2,
            "ISO 8601",
            "invalid_value",
        ),
        "audit export: bad --until": Case(
            ("audit", "export", *conn, "--out", f["absent"], "--until", "bogus"),
            2,
            "ISO 8601",
            "invalid_value",
        ),
        "audit export: no out": Case(("audit", "export", *conn), 2, "--out", "invalid_value"),
        "audit verify: missing folder": Case(
            ("audit", "verify", f["absent"], "--no-attestation"),
            2,
            "no such folder",
            "missing_file",
        ),
        "audit verify: malformed export": Case(
            ("audit", "verify", f["export"], "--no-attestation"), 1, "", ""
        ),
        "audit verify: trust root missing": Case(
            ("audit", "verify", f["export"], "--trust-root", f["absent"]),
            2,
            "no such file",
            "missing_file",
        ),
        # veil policy
        "policy keygen: exists": Case(
            ("policy", "keygen", "--out", f["op"]), 2, "refusing to overwrite", "invalid_value"
        ),
        "policy sign: missing policy": Case(
            ("policy", "sign", f["absent"], "--key", f["op"]), 2, "no such file", "missing_file"
        ),
        "policy sign: not a private key": Case(
            ("policy", "sign", f["policy.toml"], "--key", f["op"] + ".pub"),
            2,
            "not an unencrypted PEM private key",
            "malformed",
        ),
        "policy sign: invalid policy": Case(
            ("policy", "sign", f["policy.toml"], "--key", f["op"]), 1, "version", "invalid_value"
        ),
        "policy check: invalid policy": Case(
            ("policy", "check", f["policy.toml"]), 1, "version", "invalid_value"
        ),
        "policy check: missing policy": Case(
            ("policy", "check", f["absent"]), 2, "no such file", "missing_file"
        ),
        "policy check: bad key": Case(
            ("policy", "check", f["policy.toml"], "--key", f["junk"]), 2, "--key", "invalid_value"
        ),
        # veil serve, veil measure
        "serve: bad log level": Case(
            (*serve, "--log-level", "foo"),
            2,
            "invalid choice: 'FOO'",
            "invalid_value",
            json_ok=False,
        ),
        "serve: bad port": Case(
            (*serve, "--port", "70000"), 2, "must be a port number", "invalid_value", json_ok=False
        ),
        "serve: no data dir": Case(("serve",), 2, "--data-dir", "invalid_value", json_ok=False),
        "serve: replica without its database": Case(
            (*serve, "--state", "postgres"), 2, "VEIL_DATABASE_URL", "missing_value", json_ok=False
        ),
        "coordinator: no manifest": Case(
            ("coordinator", "--data-dir", f["data-dir"], "--owner-key", f["absent"]),
            2,
            "--manifest",
            "invalid_value",
            json_ok=False,
        ),
        "serve: missing collateral": Case(
            (*serve, "--tdx-collateral", f["absent"]),
            2,
            "no such folder",
            "missing_file",
            json_ok=False,
        ),
        "measure: not a data dir": Case(
            ("measure", "--data-dir", f["absent"]), 2, "no config.toml", "missing_file"
        ),
        # veil watermark
        "watermark: no action": Case(("watermark",), 2, "required: COMMAND", "invalid_value"),
        "watermark keygen: exists": Case(
            ("watermark", "keygen", "--out", f["wm"]), 2, "refusing to overwrite", "invalid_value"
        ),
        "watermark reveal: missing key": Case(
            ("watermark", "reveal", "--key", f["absent"], "--out", f["absent"]),
            2,
            "no such file",
            "missing_file",
        ),
        "watermark reveal: not a key": Case(
            ("watermark", "reveal", "--key", f["list.json"], "--out", f["absent"]),
            2,
            "is not a veil-wm-key-v1 key file",
            "invalid_value",
        ),
        "watermark embed: zero bits": Case(
            (*emb, f["data.npz"], *emb_out, "--bits", "0"),
            2,
            "--bits: must be a whole number",
            "invalid_value",
        ),
        "watermark embed: malformed data": Case(
            (*emb, f["data.npz"], *emb_out), 1, "is not an .npz", "malformed"
        ),
        "watermark verify: missing model": Case(
            (*wv, "--model", f["absent"], *op), 2, "no such file", "missing_file"
        ),
        "watermark verify: bad threshold": Case(
            (*wv, *m, *op, "--threshold", "2"), 2, "between 0 and 1", "invalid_value"
        ),
        "watermark verify: malformed claim": Case(
            (*wv, *m, "--opening", f["wm"]), 1, "claim", ""
        ),  # reason: watermark's
        "watermark verify: malformed opening": Case((*wv, *m, *op), 2, "--opening", "malformed"),
    }


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in [n for n in os.environ if n.startswith("VEIL_")]:
        monkeypatch.delenv(name)
    yield


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("veil: warning: ")]


def test_the_usual_mistakes_get_one_line_and_the_documented_exit_code(
    files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures = []
    table = cases(files)
    for name, case in table.items():
        with monkeypatch.context() as env:
            for key, value in case.env:
                env.setenv(key, value)
            code = main(list(case.argv))
            out = capsys.readouterr()
            lines = _errors(out.err)
            if code != case.code or len(lines) != 1 or case.message not in lines[0]:
                failures.append(f"{name}: exit {code}, stderr {out.err!r}")
                continue
            if "Traceback" in out.err or out.out:
                failures.append(f"{name}: {out.out!r} {out.err!r}")
            if not case.json_ok:
                continue
            code = main([*case.argv, "--json"])
            out = capsys.readouterr()
            try:
                doc = json.loads(out.out)
            except json.JSONDecodeError:
                failures.append(f"{name} --json: stdout {out.out!r}")
                continue
            error = doc.get("error", {})
            if code != case.code or set(error) < {"reason", "message", "kind"}:
                failures.append(f"{name} --json: exit {code}, {doc}")
            elif case.reason and error["reason"] != case.reason:
                failures.append(f"{name} --json: reason {error['reason']!r}, not {case.reason!r}")
    assert not failures, "\n".join(failures)
    uncovered = [
        path
        for path, _ in _commands(build_parser())
        if not any(list(c.argv[: len(path.split())]) == path.split() for c in table.values())
    ]
    assert uncovered == [], "every command has its usual mistakes in the table"


# -- help text, defaults, --json on every command -------------------------------------------------


def _commands(
    parser: argparse.ArgumentParser, path: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{path} {name}".strip()
                yield full, sub
                yield from _commands(sub, full)


def test_every_option_has_help_and_shows_its_default() -> None:
    missing = []
    for path, parser in _commands(build_parser()):
        if parser.prefix_chars == "\0":
            continue  # a placeholder for a command that is not installed
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if not action.help:
                missing.append(f"{path} {action.option_strings[0]}: no help")
            default = action.default
            has_default = default not in (None, False, [], argparse.SUPPRESS)
            shown = f"(default: {default})" in " ".join(text.split())
            if has_default and action.nargs != 0 and not shown:
                missing.append(f"{path} {action.option_strings[0]}: default {default} not shown")
    assert not missing, "\n".join(missing)


def test_every_command_that_prints_a_result_takes_json() -> None:
    without = []
    for path, parser in _commands(build_parser()):
        runs = parser.get_default("func") is not None
        groups = any(
            isinstance(a, argparse._SubParsersAction) and a.required for a in parser._actions
        )
        if (
            runs
            and not groups
            and path not in ("serve", "coordinator")
            and "--json" not in parser.format_help()
        ):
            without.append(path)
    assert without == []


def test_docs_cli_md_is_the_parser_reference() -> None:
    documented = section(CLI_DOC.read_text())
    assert documented == render_reference(build_parser()), (
        "docs/CLI.md is out of date: python -m veil.sdk._cli._reference --write"
    )
