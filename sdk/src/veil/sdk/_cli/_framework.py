"""What every ``veil`` command shares: the exit-code table, the one error path, the options.

Exit codes (docs/CLI.md):

    0  success; verified; detected
    1  refused; not verified; not detected -- evidence, claims, records, exports or policies
       that are present but malformed or truncated included (they are refused, not misused)
    2  usage: an unknown or missing option, a bad option value, a file that is missing or
       cannot be read, a command whose distribution or dependency is not installed

A handler returns an :class:`Outcome` (what ``--json`` prints, what a person reads, and 0 or 1)
or raises: :class:`UsageError` (2), any other ``VeilError`` (2 for a ``ConfigError`` about a
missing or unreadable file, else 1). ``main`` turns every exception into one line on stderr and,
under ``--json``, ``{"error": {"reason", "message", "kind"}}`` on stdout.

Only the command line reads the environment: ``VEIL_TARGET``, ``VEIL_TRUST_ROOT``,
``VEIL_API_KEY_FILE`` (and ``VEIL_API_KEY``) are the defaults of the options of the same name.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from veil.sdk._client import Client
from veil.sdk._core import TlsOptions
from veil.sdk.attestation._policy import AttestationPolicy
from veil.sdk.attestation._roots import TrustRoot
from veil.sdk.errors import (
    ConfigError,
    ConfigFailure,
    DecryptionError,
    PrivacyBudgetExceeded,
    RemoteError,
    VeilError,
)
from veil.sdk.protocol import Suite

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
DEFAULT_PORT = 7443  # `veil serve`'s port, and the one `--target HOST` dials
ENV_TARGET = "VEIL_TARGET"
ENV_TRUST_ROOT = "VEIL_TRUST_ROOT"
ENV_API_KEY_FILE = "VEIL_API_KEY_FILE"
ENV_API_KEY = "VEIL_API_KEY"
MEASUREMENT_BYTES = 48  # SEV-SNP MEASUREMENT and TDX MRTD
# What no --expect-measurement means, said once per command, wherever a policy is built.
ANY_MEASUREMENT = "no --expect-measurement: accepting any enclave code (pin one: veil measure)"


class UsageError(ConfigError):
    """The command cannot run as asked (a bad option, a missing or unreadable file): exit 2."""

    def __init__(
        self,
        message: str,
        *,
        reason: ConfigFailure = ConfigFailure.INVALID_VALUE,
        prog: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.prog = prog


class Rejected(Exception):
    """A refusal (a ``VeilError``) with more to say under ``--json`` (e.g. the steps that ran)."""

    def __init__(self, error: VeilError, **extra: Any) -> None:
        super().__init__(str(error))
        self.error = error
        self.extra = extra


@dataclass(frozen=True)
class Outcome:
    """A command's result: ``doc`` for ``--json``, ``text`` for people, ``code`` 0 or 1."""

    doc: Mapping[str, Any] | None = None
    text: str = ""
    code: int = EXIT_OK


Handler = Callable[[argparse.Namespace], Outcome]


# -- exit codes and the error shape ------------------------------------------------------------


def exit_code(exc: BaseException) -> int:
    """The exit-code table, applied to an exception (the only place it is applied)."""
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    if isinstance(exc, ConfigError) and exc.reason in (
        ConfigFailure.MISSING_FILE,
        ConfigFailure.UNREADABLE,
    ):
        return EXIT_USAGE
    return EXIT_REFUSED


def error_reason(exc: BaseException) -> str:
    """The machine-readable reason of an error, as ``--json`` prints it."""
    if isinstance(exc, DecryptionError):
        return "undecryptable"
    if isinstance(exc, PrivacyBudgetExceeded):
        return "budget_exhausted"
    reason = getattr(exc, "reason", None)
    value = str(reason.value) if isinstance(reason, enum.Enum) else ""
    if isinstance(exc, RemoteError) and not value:
        return exc.code.lower()
    return value or "internal"


def error_doc(exc: BaseException, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"error": {"reason", "message", "kind"}}``: the one JSON shape of every failure."""
    doc: dict[str, Any] = {
        "error": {"reason": error_reason(exc), "message": str(exc), "kind": type(exc).__name__}
    }
    if isinstance(exc, PrivacyBudgetExceeded):
        doc["error"]["remaining_epsilon"] = exc.remaining_epsilon
        doc["error"]["remaining_delta"] = exc.remaining_delta
    doc.update(extra or {})
    return doc


def warn(message: str) -> None:
    """A one-line warning on stderr (stdout stays the result, parseable under ``--json``)."""
    print(f"veil: warning: {message}", file=sys.stderr)


# -- the parser --------------------------------------------------------------------------------


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default (when it has one worth showing) after its help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" not in text
            and action.option_strings
            and action.nargs != 0
            and default not in (None, False, argparse.SUPPRESS)
            and default != []
        ):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are a ``UsageError`` for ``main``'s one error path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)", prog=self.prog)


def add_command(
    sub: Any,
    name: str,
    func: Handler,
    *,
    help: str,
    description: str | None = None,
    json_output: bool = True,
) -> Parser:
    """Add a command (``sub`` is a subparsers action); under ``--json`` it prints JSON."""
    parser: Parser = sub.add_parser(name, help=help, description=description or help)
    parser.set_defaults(func=func, cli_prog=parser.prog)
    if json_output:
        add_json_option(parser)
    return parser


def add_group(sub: Any, name: str, *, help: str) -> Any:
    """A command made of subcommands (``veil models upload|list|delete``): their subparsers."""
    parser: Parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(cli_prog=parser.prog)
    return parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,  # the top-level default (False) stands unless it is given
        help='print the result as JSON on stdout (a failure as {"error": {...}})',
    )


def deprecated_alias(parser: argparse.ArgumentParser, alias: str, *, dest: str, use: str) -> None:
    """A hidden old spelling of an option: it still works, and says what to write instead."""

    class Alias(argparse.Action):
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: Any,
            option_string: str | None = None,
        ) -> None:
            warn(f"{alias} is deprecated: use {use}")
            setattr(namespace, dest, values)

    parser.add_argument(alias, action=Alias, dest=f"_alias_{dest}", help=argparse.SUPPRESS)


def require(args: argparse.Namespace, dest: str, flag: str) -> Any:
    """An option that must be given (checked here when a hidden alias may also supply it)."""
    value = getattr(args, dest, None)
    if value is None:
        raise UsageError(
            f"the following arguments are required: {flag}", reason=ConfigFailure.MISSING_VALUE
        )
    return value


# -- option value types (a bad value is a usage error, in argparse's one line) ------------------


N = TypeVar("N", int, float)


def value_type(
    parse: Callable[[str], N], accept: Callable[[N], bool], expected: str
) -> Callable[[str], N]:
    """An option type: ``parse`` the text, keep it if ``accept``, else one usage line
    ``must be <expected>, not '<text>'`` (a text that does not parse gets the same line)."""

    def convert(text: str) -> N:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, not {text!r}")
        return value

    return convert


positive_int = value_type(int, lambda v: v >= 1, "a whole number >= 1")
positive_float = value_type(float, lambda v: 0 < v < math.inf, "a number > 0")
# a number strictly between 0 and 1 (a delta, a threshold)
fraction = value_type(float, lambda v: 0 < v < 1, "a number between 0 and 1")


def iso_time(text: str) -> datetime:
    """An ISO 8601 time (UTC when it names no offset)."""
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be an ISO 8601 time such as 2026-01-15T00:00:00Z, not {text!r}"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def hex_bytes(size: int | None = None) -> Callable[[str], bytes]:
    def parse(text: str) -> bytes:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be hex, not {text!r}") from None
        if size is not None and len(raw) != size:
            raise argparse.ArgumentTypeError(
                f"must be {size} bytes ({2 * size} hex digits), not {len(raw)}"
            )
        return raw

    parse.__name__ = "hex"
    return parse


def measurement(text: str) -> str:
    """A measurement pin: 48 bytes as 96 hex digits (SEV-SNP MEASUREMENT, TDX MRTD)."""
    return hex_bytes(MEASUREMENT_BYTES)(text).hex()


# -- files ---------------------------------------------------------------------------------------


def read_input(path: Path, label: str) -> bytes:
    """A file the command was given; missing or unreadable is a usage error naming ``label``."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(
            f"{label} {path}: no such file", reason=ConfigFailure.MISSING_FILE
        ) from None
    except OSError as exc:
        raise UsageError(
            f"{label} {path}: cannot read ({exc.strerror or type(exc).__name__})",
            reason=ConfigFailure.UNREADABLE,
        ) from None


def check_readable(path: Path, label: str) -> Path:
    """A file the library will stream: checked here so a mistake is named by its option."""
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise UsageError(
            f"{label} {path}: no such file", reason=ConfigFailure.MISSING_FILE
        ) from None
    except OSError as exc:
        raise UsageError(
            f"{label} {path}: cannot read ({exc.strerror or type(exc).__name__})",
            reason=ConfigFailure.UNREADABLE,
        ) from None
    return path


def read_text(path: Path, label: str) -> str:
    """A text file; one that is not UTF-8 is present but malformed (refused, exit 1)."""
    try:
        return read_input(path, label).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{label} {path} is not UTF-8 text", reason=ConfigFailure.MALFORMED
        ) from None


def read_json(path: Path, label: str) -> Any:
    """A JSON document; one that does not parse is malformed (refused, exit 1)."""
    try:
        return json.loads(read_text(path, label))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{label} {path} is not JSON ({exc.msg}, line {exc.lineno})",
            reason=ConfigFailure.MALFORMED,
        ) from None


def write_output(path: Path, data: bytes | str, label: str, *, mode: int | None = None) -> None:
    """Write a result file (atomically); failing to is a usage error naming ``label``."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if mode is None else mode)
        try:
            os.write(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UsageError(
            f"{label} {path}: cannot write ({exc.strerror or type(exc).__name__})",
            reason=ConfigFailure.UNREADABLE,
        ) from None


# -- the enclave connection: options, environment defaults, policy, client ------------------------


Options = argparse.ArgumentParser | argparse._ArgumentGroup


def add_trust_options(parser: Options, *, what: str = "the evidence") -> None:
    """``--trust-root`` and ``--expect-measurement``: the policy, written once for every command."""
    parser.add_argument(
        "--trust-root",
        type=Path,
        metavar="PEM",
        help=f"verify {what} under this root instead of the vendor's, e.g. "
        f"D/simulated-root.pem (a test root: no hardware guarantee) (default: ${ENV_TRUST_ROOT})",
    )
    parser.add_argument(
        "--expect-measurement",
        action="append",
        type=measurement,
        default=[],
        metavar="HEX",
        help="accept only this measurement, 96 hex digits (repeatable; "
        "default: any measurement, with a warning)",
    )


def add_client_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that talks to an enclave."""
    group = parser.add_argument_group("enclave connection")
    group.add_argument(
        "--target",
        metavar="HOST[:PORT]",
        help=f"enclave address; port {DEFAULT_PORT} (veil serve's) when omitted "
        f"(default: ${ENV_TARGET})",
    )
    group.add_argument(
        "--api-key-file",
        type=Path,
        metavar="FILE",
        help=f"file holding the tenant's API key, whitespace stripped "
        f"(default: ${ENV_API_KEY_FILE}, else the key itself in ${ENV_API_KEY})",
    )
    group.add_argument("--tenant", default="default", help="tenant name")
    add_trust_options(group, what="the enclave")
    group.add_argument(
        "--pq", action="store_true", help="seal with the hybrid ML-KEM-768+X25519 suite"
    )
    group.add_argument("--tls-ca", type=Path, metavar="PEM", help="TLS: the server's root (PEM)")
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help="mutual TLS: client cert")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="mutual TLS: client key")


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def target(args: argparse.Namespace) -> str:
    """``--target`` (or ``$VEIL_TARGET``) as a gRPC target, with veil serve's port by default."""
    value, label = args.target, "--target"
    if value is None:
        value, label = _env(ENV_TARGET), f"${ENV_TARGET}"
    if value is None:
        raise UsageError(
            f"no enclave address: pass --target HOST[:PORT] or set {ENV_TARGET}",
            reason=ConfigFailure.MISSING_VALUE,
        )
    return with_port(value, label)


_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::([0-9]+))?")


def with_port(value: str, label: str = "--target") -> str:
    if value.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return value  # a gRPC target URI, taken as written
    match = _HOST_PORT.fullmatch(value)
    if match is None or (match.group(2) is not None and not 0 < int(match.group(2)) < 65536):
        raise UsageError(f"{label} {value!r} is not HOST[:PORT]")
    return f"{match.group(1)}:{match.group(2) or DEFAULT_PORT}"


def trust_root_file(args: argparse.Namespace) -> tuple[Path, str] | None:
    """The trust root the command was given (flag first, then ``$VEIL_TRUST_ROOT``), labelled."""
    if getattr(args, "trust_root", None) is not None:
        return args.trust_root, "--trust-root"
    env = _env(ENV_TRUST_ROOT)
    return (Path(env), f"${ENV_TRUST_ROOT}") if env is not None else None


def snp_trust_root(args: argparse.Namespace) -> TrustRoot | None:
    """The pinned SEV-SNP root, loaded (a file that holds none is a usage error)."""
    found = trust_root_file(args)
    if found is None:
        return None
    path, label = found
    try:
        return TrustRoot.from_pem(read_input(path, label))
    except UsageError:
        raise
    except VeilError as exc:
        raise UsageError(
            f"{label} {path} is not a root certificate (PEM): {exc}", reason=ConfigFailure.MALFORMED
        ) from None


def attestation_policy(args: argparse.Namespace) -> AttestationPolicy:
    """The SEV-SNP policy of ``--trust-root``/``--expect-measurement``: the one place that
    decides that no measurement means any measurement (and says so)."""
    root = snp_trust_root(args)
    measurements: list[str] = list(getattr(args, "expect_measurement", []))
    if not measurements:
        warn(ANY_MEASUREMENT)
    if root is not None:
        return AttestationPolicy.simulated_for_tests(root, measurements=measurements)
    return AttestationPolicy.production(
        measurements=measurements, allow_any_measurement=not measurements
    )


def api_key(args: argparse.Namespace) -> str:
    """The API key: ``--api-key-file``, ``$VEIL_API_KEY_FILE`` or ``$VEIL_API_KEY``."""
    source: tuple[Path, str] | None = None
    if args.api_key_file is not None:
        source = (args.api_key_file, "--api-key-file")
    elif (env_file := _env(ENV_API_KEY_FILE)) is not None:
        source = (Path(env_file), f"${ENV_API_KEY_FILE}")
    elif (key := _env(ENV_API_KEY)) is not None:
        return key
    if source is None:
        raise UsageError(
            f"no API key: pass --api-key-file FILE or set {ENV_API_KEY_FILE} (or {ENV_API_KEY})",
            reason=ConfigFailure.MISSING_VALUE,
        )
    path, label = source
    key = read_text(path, label).strip()
    if not key:
        raise UsageError(f"{label} {path} is empty", reason=ConfigFailure.MISSING_VALUE)
    return key


def client_from_args(args: argparse.Namespace, *, need_key: bool = True) -> Client:
    """A ``Client`` for the command's options (nothing is dialled until the first call)."""
    address = target(args)
    key = api_key(args) if need_key else "unused-for-attestation"
    tls = None
    if args.tls_ca or args.tls_cert or args.tls_key:
        if (args.tls_cert is None) != (args.tls_key is None):
            raise UsageError("--tls-cert and --tls-key go together")
        tls = TlsOptions(
            root_certificates=read_input(args.tls_ca, "--tls-ca") if args.tls_ca else None,
            client_certificate=read_input(args.tls_cert, "--tls-cert") if args.tls_cert else None,
            client_key=read_input(args.tls_key, "--tls-key") if args.tls_key else None,
        )
    return Client(
        address,
        api_key=key,
        tenant=args.tenant,
        policy=attestation_policy(args),
        suite=Suite.MLKEM768X25519_SHA256_AES256GCM if args.pq else Suite.X25519_SHA256_AES256GCM,
        tls=tls,
        progress=sys.stderr.isatty(),
    )


def json_text(doc: Mapping[str, Any] | Sequence[Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True)
