"""Attestation policy as a TOML file, signed by the operator (Ed25519, detached).

A client pins the operator's policy key instead of raw measurements: the operator publishes
``POLICY.toml`` and ``POLICY.toml.sig`` (base64 of a 64-byte Ed25519 signature over the exact
file bytes); :func:`load_signed_policy` checks the signature *before* parsing a single byte, then
builds the same policy objects code would (``AttestationPolicy``, ``TdxPolicy``, ``GpuPolicy``).

Schema (every key optional unless said otherwise; unknown keys are errors)::

    version = 1                               # required
    allowed_tees = ["sev-snp", "tdx", "nvidia-gpu"]   # required, non-empty
    max_evidence_age_seconds = 300

    [snp]
    roots = ["amd"]             # "amd", {file = "ark.pem", sha256 = "<hex>"}, or {pem = "..."}
    allow_debug = false
    allowed_vmpls = [0]
    min_tcb = {bootloader = 3, tee = 0, snp = 8, microcode = 115, fmc = 0}

    [tdx]
    roots = ["intel"]                         # "intel", {file = ...} or {pem = ...}
    accepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
    allow_debug = false
    mrseam = ["<96 hex>"]
    max_collateral_age_seconds = 2592000

    [gpu]
    device_root = "nvidia"                    # or {file = ...} / {pem = ...}
    rim_root = "nvidia"
    rim_dir = "rims/"                         # offline RIM cache (reference values)

    [[release]]                               # expected measurements, per named release
    name = "2026.02"
    snp_measurements = ["<96 hex>"]
    tdx = {mrtd = "<96 hex>", rtmr0 = "...", rtmr1 = "...", rtmr2 = "...", rtmr3 = "..."}

Relative paths are relative to the policy file's folder; a root read from a file is pinned by
its SHA-256 (the signature covers the policy's bytes, not the files it names). Any root that is
not the vendor's built-in one is a test root: verifying under it warns every time.
Errors are ``ConfigError`` naming the file and the key path, e.g.
``policy.toml: snp.min_tcb.snp must be an integer 0..255``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from veil.sdk.attestation._policy import AttestationPolicy
from veil.sdk.attestation._roots import TrustRoot, amd_roots
from veil.sdk.attestation.snp_report import TcbVersion
from veil.sdk.attestation.tdx._collateral import TcbStatus
from veil.sdk.attestation.tdx._policy import TdxPolicy, intel_sgx_root_ca
from veil.sdk.errors import AttestationError, AttestationFailure, ConfigError, VeilError

__all__ = [
    "KNOWN_TEES",
    "GpuPolicy",
    "PolicyFile",
    "Release",
    "TdxReleaseValues",
    "load_policy",
    "load_policy_key",
    "load_signed_policy",
    "parse_policy",
    "policy_key_id",
    "sign_policy",
    "signature_path",
    "verify_policy_signature",
]

KNOWN_TEES = ("sev-snp", "tdx", "nvidia-gpu")
_SECTION_FOR_TEE = {"sev-snp": "snp", "tdx": "tdx", "nvidia-gpu": "gpu"}
_TDX_REGISTERS = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3")


@dataclass(frozen=True)
class TdxReleaseValues:
    """A TD's expected registers for one release (``None``: not pinned by this release)."""

    mrtd: bytes | None = None
    rtmr0: bytes | None = None
    rtmr1: bytes | None = None
    rtmr2: bytes | None = None
    rtmr3: bytes | None = None


@dataclass(frozen=True)
class Release:
    """The measurements one named release of the enclave is expected to produce."""

    name: str
    snp_measurements: frozenset[bytes]
    tdx: TdxReleaseValues | None


@dataclass(frozen=True)
class GpuPolicy:
    """Pinned NVIDIA roots and where the reference values (RIMs) come from."""

    device_root: x509.Certificate | None
    rim_root: x509.Certificate | None
    rim_dir: Path | None

    @property
    def insecure(self) -> bool:
        return self.device_root is not None or self.rim_root is not None


@dataclass(frozen=True)
class PolicyFile:
    """A parsed (and, via :func:`load_signed_policy`, authenticated) policy file.

    ``snp`` / ``tdx`` hold the measurements of every release; :meth:`for_release` narrows
    them to one release (for TDX that also keeps the registers of one release together).
    """

    source: str
    sha256: str
    allowed_tees: frozenset[str]
    max_evidence_age: timedelta
    releases: tuple[Release, ...]
    snp: AttestationPolicy | None
    tdx: TdxPolicy | None
    gpu: GpuPolicy | None
    signed_by: str | None = None

    def allows(self, tee: str) -> bool:
        return tee in self.allowed_tees

    def require(self, tee: str) -> None:
        """Raise ``AttestationError(POLICY)`` unless ``tee`` is allowed by this policy."""
        if tee not in self.allowed_tees:
            raise AttestationError(
                AttestationFailure.POLICY,
                f"{self.source}: TEE {tee!r} is not allowed "
                f"(allowed_tees = {sorted(self.allowed_tees)})",
            )

    def release(self, name: str) -> Release:
        for r in self.releases:
            if r.name == name:
                return r
        raise ConfigError(
            f"{self.source}: no release named {name!r} "
            f"(have {', '.join(r.name for r in self.releases) or 'none'})"
        )

    def for_release(self, name: str) -> PolicyFile:
        """This policy with only release ``name``'s measurements pinned."""
        r = self.release(name)
        snp = self.snp
        if snp is not None:
            snp = replace(snp, expected_measurements=r.snp_measurements)
        tdx = self.tdx
        if tdx is not None:
            tdx = _with_releases(tdx, [r])
        return replace(self, releases=(r,), snp=snp, tdx=tdx)


# -- parsing helpers: every error names the file and key path -------------------------------


class _Ctx:
    def __init__(self, source: str, base_dir: Path | None) -> None:
        self.source = source
        self.base_dir = base_dir

    def err(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key} {message}")

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.err(key, "must be a table")
        return value

    def keys(self, table: Mapping[str, Any], prefix: str, allowed: Iterable[str]) -> None:
        extra = sorted(set(table) - set(allowed))
        if extra:
            where = f"{prefix}.{extra[0]}" if prefix else extra[0]
            raise ConfigError(f"{self.source}: {where} is not a known key")

    def boolean(self, table: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.err(path, "must be true or false")
        return value

    def integer(self, value: Any, path: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.err(path, f"must be an integer {lo}..{hi}")
        return value

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.err(path, "must be a non-empty string")
        return value

    def strings(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, list) or not value:
            raise self.err(path, "must be a non-empty array of strings")
        return [self.string(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def hexbytes(self, value: Any, path: str, size: int) -> bytes:
        if not isinstance(value, str):
            raise self.err(path, f"must be a hex string of {size} bytes")
        try:
            raw = bytes.fromhex(value)
        except ValueError as exc:
            raise self.err(path, f"must be a hex string of {size} bytes") from exc
        if len(raw) != size:
            raise self.err(path, f"must be {size} bytes ({2 * size} hex digits), got {len(raw)}")
        return raw

    def seconds(self, table: Mapping[str, Any], key: str, path: str) -> timedelta | None:
        if key not in table:
            return None
        return timedelta(seconds=self.integer(table[key], path, 1, 10 * 365 * 86400))

    def pem_certs(self, value: Any, path: str) -> list[x509.Certificate]:
        """A root given as ``{file = "x.pem"}`` or ``{pem = "-----BEGIN ..."}``."""
        spec = self.table(value, path)
        self.keys(spec, path, ("file", "pem", "sha256"))
        if ("file" in spec) == ("pem" in spec):
            raise self.err(path, "must have exactly one of 'file' or 'pem'")
        if "file" in spec:
            name = Path(self.string(spec["file"], f"{path}.file"))
            file = name if name.is_absolute() or self.base_dir is None else self.base_dir / name
            try:
                data = file.read_bytes()
            except (OSError, ValueError) as exc:
                why = exc.strerror if isinstance(exc, OSError) else str(exc)
                raise self.err(f"{path}.file", f"cannot be read ({file}: {why})") from exc
            # The signature covers the policy's bytes, not the file's: pin the file by digest.
            digest = hashlib.sha256(data).hexdigest()
            if "sha256" not in spec:
                raise self.err(f"{path}.sha256", f"is required with 'file' (it is {digest})")
            if self.string(spec["sha256"], f"{path}.sha256").lower() != digest:
                raise self.err(f"{path}.sha256", f"does not match {file.name} (sha256 {digest})")
        else:
            if "sha256" in spec:
                raise self.err(f"{path}.sha256", "is only for 'file' roots")
            data = self.string(spec["pem"], f"{path}.pem").encode()
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise self.err(path, "does not hold a PEM certificate") from exc
        return certs


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _snp_roots(ctx: _Ctx, value: Any) -> tuple[TrustRoot, ...]:
    if not isinstance(value, list) or not value:
        raise ctx.err("snp.roots", 'must be a non-empty array ("amd", {file = ...}, {pem = ...})')
    builtin = {_der(r.ark): r for r in amd_roots()}
    out: list[TrustRoot] = []
    for i, item in enumerate(value):
        path = f"snp.roots[{i}]"
        if item == "amd":
            out.extend(amd_roots())
            continue
        if isinstance(item, str):
            raise ctx.err(path, f'must be "amd" or a table, got {item!r}')
        pem = b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in ctx.pem_certs(item, path)
        )
        try:
            root = TrustRoot.from_pem(pem, insecure=True)
        except VeilError as exc:
            raise ctx.err(path, f"is not an ARK: {exc}") from exc
        out.append(builtin.get(_der(root.ark), root))
    return tuple(dict.fromkeys(out))


def _x509_roots(ctx: _Ctx, value: Any, key: str, builtin: str) -> tuple[x509.Certificate, ...]:
    if not isinstance(value, list) or not value:
        raise ctx.err(key, f'must be a non-empty array ("{builtin}", {{file = ...}}, ...)')
    out: list[x509.Certificate] = []
    for i, item in enumerate(value):
        path = f"{key}[{i}]"
        if item == builtin:
            out.append(intel_sgx_root_ca())
        elif isinstance(item, str):
            raise ctx.err(path, f'must be "{builtin}" or a table, got {item!r}')
        else:
            out.extend(ctx.pem_certs(item, path))
    return tuple(out)


def _one_root(ctx: _Ctx, value: Any, key: str, builtin: str) -> x509.Certificate | None:
    """``None`` means the vendor's built-in root (package data)."""
    if value == builtin:
        return None
    if isinstance(value, str):
        raise ctx.err(key, f'must be "{builtin}" or a table, got {value!r}')
    certs = ctx.pem_certs(value, key)
    if len(certs) != 1:
        raise ctx.err(key, f"must hold exactly one certificate, got {len(certs)}")
    from veil.sdk.attestation.nvidia._roots import nvidia_device_root, nvidia_rim_root

    vendor = nvidia_device_root() if key == "gpu.device_root" else nvidia_rim_root()
    if _der(certs[0]) == _der(vendor):
        return None  # NVIDIA's own root given as a file: the built-in one, not a test root
    return certs[0]


def _min_tcb(ctx: _Ctx, value: Any) -> TcbVersion:
    table = ctx.table(value, "snp.min_tcb")
    fields = ("bootloader", "tee", "snp", "microcode", "fmc")
    ctx.keys(table, "snp.min_tcb", fields)
    missing = [f for f in fields[:4] if f not in table]
    if missing:
        raise ctx.err(f"snp.min_tcb.{missing[0]}", "is required")
    values = {f: ctx.integer(table[f], f"snp.min_tcb.{f}", 0, 255) for f in fields if f in table}
    return TcbVersion(**values)


def _releases(ctx: _Ctx, value: Any) -> tuple[Release, ...]:
    if not isinstance(value, list):
        raise ctx.err("release", "must be an array of tables ([[release]])")
    out: list[Release] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        path = f"release[{i}]"
        table = ctx.table(item, path)
        ctx.keys(table, path, ("name", "snp_measurements", "tdx"))
        name = ctx.string(table.get("name"), f"{path}.name")
        if name in seen:
            raise ctx.err(f"{path}.name", f"repeats release {name!r}")
        seen.add(name)
        snp: frozenset[bytes] = frozenset()
        if "snp_measurements" in table:
            snp = frozenset(
                ctx.hexbytes(v, f"{path}.snp_measurements[{j}]", 48)
                for j, v in enumerate(
                    ctx.strings(table["snp_measurements"], f"{path}.snp_measurements")
                )
            )
        tdx = None
        if "tdx" in table:
            t = ctx.table(table["tdx"], f"{path}.tdx")
            ctx.keys(t, f"{path}.tdx", _TDX_REGISTERS)
            if not t:
                raise ctx.err(f"{path}.tdx", "pins no register")
            tdx = TdxReleaseValues(
                **{k: ctx.hexbytes(v, f"{path}.tdx.{k}", 48) for k, v in t.items()}
            )
        if not snp and tdx is None:
            raise ctx.err(path, "pins no measurement (snp_measurements or tdx)")
        out.append(Release(name=name, snp_measurements=snp, tdx=tdx))
    return tuple(out)


def _with_releases(policy: TdxPolicy, releases: Sequence[Release]) -> TdxPolicy:
    """``policy`` with MRTD / RTMR allowlists taken from ``releases`` (None: not pinned)."""

    def allow(reg: str) -> frozenset[bytes] | None:
        values = {
            getattr(r.tdx, reg) for r in releases if r.tdx and getattr(r.tdx, reg) is not None
        }
        return frozenset(values) if values else None

    return replace(
        policy,
        mrtd=allow("mrtd"),
        rtmr0=allow("rtmr0"),
        rtmr1=allow("rtmr1"),
        rtmr2=allow("rtmr2"),
        rtmr3=allow("rtmr3"),
    )


def parse_policy(
    data: bytes, *, source: str = "policy.toml", base_dir: Path | None = None
) -> PolicyFile:
    """Parse and validate policy bytes (not authenticated: see :func:`load_signed_policy`)."""
    ctx = _Ctx(source, base_dir)
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: is not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: is not valid TOML ({exc})") from exc
    ctx.keys(
        doc,
        "",
        ("version", "allowed_tees", "max_evidence_age_seconds", "snp", "tdx", "gpu", "release"),
    )
    if "version" not in doc:
        raise ctx.err("version", "is required (version = 1)")
    if type(doc["version"]) is not int or doc["version"] != 1:
        raise ctx.err("version", f"must be 1, got {doc['version']!r}")
    tees = ctx.strings(doc.get("allowed_tees"), "allowed_tees")
    for i, tee in enumerate(tees):
        if tee not in KNOWN_TEES:
            raise ctx.err(f"allowed_tees[{i}]", f"must be one of {', '.join(KNOWN_TEES)}")
        if _SECTION_FOR_TEE[tee] not in doc:
            raise ctx.err(_SECTION_FOR_TEE[tee], f"is required because allowed_tees has {tee!r}")
    for section, tee in (("snp", "sev-snp"), ("tdx", "tdx"), ("gpu", "nvidia-gpu")):
        if section in doc and tee not in tees:
            raise ctx.err(section, f"is given but allowed_tees does not include {tee!r}")
    age = ctx.seconds(doc, "max_evidence_age_seconds", "max_evidence_age_seconds")
    max_age = age if age is not None else timedelta(minutes=5)
    releases = _releases(ctx, doc.get("release", []))
    snp = _parse_snp(ctx, doc["snp"], releases, max_age) if "snp" in doc else None
    tdx = _parse_tdx(ctx, doc["tdx"], releases) if "tdx" in doc else None
    gpu = _parse_gpu(ctx, doc["gpu"]) if "gpu" in doc else None
    return PolicyFile(
        source=source,
        sha256=hashlib.sha256(data).hexdigest(),
        allowed_tees=frozenset(tees),
        max_evidence_age=max_age,
        releases=releases,
        snp=snp,
        tdx=tdx,
        gpu=gpu,
    )


def _parse_snp(
    ctx: _Ctx, value: Any, releases: Sequence[Release], max_age: timedelta
) -> AttestationPolicy:
    t = ctx.table(value, "snp")
    ctx.keys(t, "snp", ("roots", "allow_debug", "allowed_vmpls", "min_tcb"))
    roots = _snp_roots(ctx, t.get("roots", ["amd"]))
    vmpls: frozenset[int] = frozenset({0, 1, 2, 3})
    if "allowed_vmpls" in t:
        raw = t["allowed_vmpls"]
        if not isinstance(raw, list) or not raw:
            raise ctx.err("snp.allowed_vmpls", "must be a non-empty array of integers 0..3")
        vmpls = frozenset(
            ctx.integer(v, f"snp.allowed_vmpls[{i}]", 0, 3) for i, v in enumerate(raw)
        )
    measurements = frozenset(m for r in releases for m in r.snp_measurements)
    return AttestationPolicy(
        roots=roots,
        expected_measurements=measurements,
        allow_debug=ctx.boolean(t, "allow_debug", "snp.allow_debug", False),
        min_tcb=_min_tcb(ctx, t["min_tcb"]) if "min_tcb" in t else None,
        allowed_vmpls=vmpls,
        max_evidence_age=max_age,
    )


def _parse_tdx(ctx: _Ctx, value: Any, releases: Sequence[Release]) -> TdxPolicy:
    t = ctx.table(value, "tdx")
    ctx.keys(
        t,
        "tdx",
        ("roots", "accepted_tcb_statuses", "allow_debug", "mrseam", "max_collateral_age_seconds"),
    )
    roots = _x509_roots(ctx, t.get("roots", ["intel"]), "tdx.roots", "intel")
    statuses = frozenset({TcbStatus.UP_TO_DATE})
    if "accepted_tcb_statuses" in t:
        names = ctx.strings(t["accepted_tcb_statuses"], "tdx.accepted_tcb_statuses")
        known = {s.value: s for s in TcbStatus}
        for i, n in enumerate(names):
            if n not in known:
                raise ctx.err(
                    f"tdx.accepted_tcb_statuses[{i}]",
                    f"must be one of {', '.join(known)}, got {n!r}",
                )
        statuses = frozenset(known[n] for n in names)
    mrseam = None
    if "mrseam" in t:
        mrseam = frozenset(
            ctx.hexbytes(v, f"tdx.mrseam[{i}]", 48)
            for i, v in enumerate(ctx.strings(t["mrseam"], "tdx.mrseam"))
        )
    policy = TdxPolicy(
        roots=roots,
        accepted_tcb_statuses=statuses,
        allow_debug=ctx.boolean(t, "allow_debug", "tdx.allow_debug", False),
        mrseam=mrseam,
        max_collateral_age=ctx.seconds(
            t, "max_collateral_age_seconds", "tdx.max_collateral_age_seconds"
        ),
    )
    return _with_releases(policy, releases)


def _parse_gpu(ctx: _Ctx, value: Any) -> GpuPolicy:
    t = ctx.table(value, "gpu")
    ctx.keys(t, "gpu", ("device_root", "rim_root", "rim_dir"))
    rim_dir = None
    if "rim_dir" in t:
        name = Path(ctx.string(t["rim_dir"], "gpu.rim_dir"))
        rim_dir = name if name.is_absolute() or ctx.base_dir is None else ctx.base_dir / name
        if not rim_dir.is_dir():
            raise ctx.err("gpu.rim_dir", f"is not a folder ({rim_dir})")
    return GpuPolicy(
        device_root=_one_root(ctx, t.get("device_root", "nvidia"), "gpu.device_root", "nvidia"),
        rim_root=_one_root(ctx, t.get("rim_root", "nvidia"), "gpu.rim_root", "nvidia"),
        rim_dir=rim_dir,
    )


def load_policy(path: str | Path) -> PolicyFile:
    """Parse a policy file WITHOUT checking a signature (for an operator's own checks)."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file.name}: cannot be read ({exc.strerror})") from exc
    return parse_policy(data, source=file.name, base_dir=file.parent)


# -- signatures ------------------------------------------------------------------------------


def signature_path(policy: str | Path) -> Path:
    """Where the detached signature of ``policy`` lives: ``POLICY.toml.sig``."""
    p = Path(policy)
    return p.with_name(p.name + ".sig")


def policy_key_id(key: ed25519.Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex (first 16 digits are shown to people)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_policy_key(data: bytes) -> ed25519.Ed25519PublicKey:
    """An operator's Ed25519 public key: PEM (SubjectPublicKeyInfo) or 32 raw bytes."""
    try:
        if len(data) == 32:
            return ed25519.Ed25519PublicKey.from_public_bytes(data)
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ConfigError(f"policy key is not an Ed25519 public key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError("policy key is not an Ed25519 public key")
    return key


def sign_policy(data: bytes, key: ed25519.Ed25519PrivateKey) -> bytes:
    """The ``.sig`` file contents for ``data``: base64 of the Ed25519 signature, one line."""
    return base64.b64encode(key.sign(data)) + b"\n"


def _signature_bytes(sig_file: bytes, source: str) -> bytes:
    try:
        sig = base64.b64decode(sig_file.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AttestationError(AttestationFailure.MALFORMED, f"{source}.sig is not base64") from exc
    if len(sig) != 64:
        raise AttestationError(
            AttestationFailure.MALFORMED, f"{source}.sig holds {len(sig)} bytes, expected 64"
        )
    return sig


def verify_policy_signature(
    data: bytes,
    sig_file: bytes,
    trusted_keys: Sequence[ed25519.Ed25519PublicKey],
    *,
    source: str = "policy.toml",
) -> ed25519.Ed25519PublicKey:
    """Return the trusted key whose signature over ``data`` verifies, or raise BAD_SIGNATURE."""
    if not trusted_keys:
        raise ConfigError("no trusted policy key given: pin at least one operator key")
    sig = _signature_bytes(sig_file, source)
    for key in trusted_keys:
        try:
            key.verify(sig, data)
        except InvalidSignature:
            continue
        return key
    raise AttestationError(
        AttestationFailure.BAD_SIGNATURE,
        f"{source}.sig does not verify under any of the {len(trusted_keys)} trusted policy key(s)",
    )


def load_signed_policy(
    path: str | Path,
    trusted_keys: Sequence[ed25519.Ed25519PublicKey | bytes],
    *,
    signature: str | Path | None = None,
) -> PolicyFile:
    """Read ``path`` and its detached signature; verify under ``trusted_keys``; then parse.

    ``trusted_keys`` are Ed25519 public keys (objects, PEM, or 32 raw bytes). The signature is
    checked over the exact file bytes before anything is parsed. Raises ``AttestationError``
    (BAD_SIGNATURE / MALFORMED) for a bad signature, ``ConfigError`` for an invalid policy.
    """
    file = Path(path)
    sig_path = Path(signature) if signature is not None else signature_path(file)
    keys = [
        k if isinstance(k, ed25519.Ed25519PublicKey) else load_policy_key(k) for k in trusted_keys
    ]
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file.name}: cannot be read ({exc.strerror})") from exc
    try:
        sig_file = sig_path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{file.name}: signature {sig_path.name} cannot be read ({exc.strerror})"
        ) from exc
    key = verify_policy_signature(data, sig_file, keys, source=file.name)
    parsed = parse_policy(data, source=file.name, base_dir=file.parent)
    return replace(parsed, signed_by=policy_key_id(key))
