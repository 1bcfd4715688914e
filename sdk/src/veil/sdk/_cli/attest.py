"""``veil attest`` (verify a live enclave) and ``veil attest verify`` (saved evidence, offline).

``veil attest verify`` checks SEV-SNP, TDX or NVIDIA GPU evidence; ``--json`` prints what was
proven plus ``steps``: each step that ran, in order, whether it passed, and what it proved (on a
rejection, the same ``steps`` beside the ``error``). The verifiers themselves stay monolithic and
authoritative; the trace is built around them here:

* TDX and NVIDIA: each step is a public verifier function called on its own
  (``verify_tdx_signature``, ``select_tcb_info``, ... / ``verify_rim``,
  ``verify_spdm_signature``, ...), and the final verdict is the full verifier's.
* SEV-SNP: ``verify_snp_report`` checks in a fixed, documented order (chain, report signature,
  VCEK binding, policy); a rejection is attributed to the step its reason belongs to, the steps
  before it passed, and the steps after it did not run.

Evidence that is present but malformed or truncated is refused (exit 1), like evidence that
does not verify; a missing file or a bad option is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import hmac
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from veil.sdk._cli._framework import (
    ANY_MEASUREMENT,
    Outcome,
    Rejected,
    UsageError,
    add_client_options,
    add_command,
    add_trust_options,
    attestation_policy,
    client_from_args,
    hex_bytes,
    iso_time,
    read_input,
    trust_root_file,
    warn,
)
from veil.sdk.attestation._policy_file import (
    PolicyFile,
    load_policy_key,
    load_signed_policy,
    parse_policy,
)
from veil.sdk.attestation._snp_verify import SnpCertChain, VerifiedSnpReport, verify_snp_report
from veil.sdk.attestation.snp_report import SnpReport
from veil.sdk.errors import (
    AttestationError,
    AttestationFailure,
    ConfigError,
    ConfigFailure,
    InsecureModeWarning,
    warn_insecure,
)
from veil.sdk.evidence import AttestedEnclave

__all__ = ["register", "snp_json"]

TEES = ("sev-snp", "tdx", "nvidia-gpu")
SNP_REPORT_BYTES = 1184
T = TypeVar("T")


def register(sub: Any) -> None:
    """``veil attest`` and, under it, ``veil attest verify``."""
    attest = add_command(
        sub,
        "attest",
        _attest,
        help="verify a live enclave's attestation",
        description="Verify a live enclave's attestation (sends nothing else). "
        "`veil attest verify EVIDENCE` checks saved evidence offline.",
    )
    add_client_options(attest)  # --api-key-file/--tenant accepted alike; attesting needs none
    verbs = attest.add_subparsers(dest="attest_command", metavar="verify")
    p = add_command(
        verbs,
        "verify",
        _verify,
        help="verify saved SEV-SNP / TDX / NVIDIA GPU evidence offline",
    )
    p.add_argument("report", type=Path, metavar="EVIDENCE", help="report / quote / SPDM evidence")
    p.add_argument("--tee", choices=TEES, help="evidence type (default: recognised by content)")
    p.add_argument(
        "--certs", type=Path, metavar="PEM", help="SNP: ASK+ARK or VCEK+ASK+ARK; GPU: device chain"
    )
    p.add_argument("--vcek", type=Path, metavar="CERT", help="SNP: the VCEK (DER or PEM)")
    p.add_argument(
        "--collateral",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="TDX: folder of Intel PCS responses (repeatable; files recognised by content)",
    )
    p.add_argument("--rims", type=Path, metavar="DIR", help="GPU: offline RIM cache folder")
    p.add_argument(
        "--rim",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="GPU: use this RIM (repeatable)",
    )
    p.add_argument(
        "--nonce", type=hex_bytes(32), metavar="HEX", help="GPU: the nonce the evidence answers"
    )
    add_trust_options(p)
    p.add_argument("--policy", type=Path, metavar="FILE", help="TOML attestation policy")
    p.add_argument(
        "--policy-key",
        type=Path,
        action="append",
        default=[],
        metavar="PUB",
        help="require FILE.sig by this operator key (repeatable)",
    )
    p.add_argument("--release", help="with --policy: accept only this release's measurements")
    p.add_argument("--allow-debug", action="store_true", help="accept a debuggable guest")
    p.add_argument(
        "--at", type=iso_time, metavar="ISO8601", help="verify as of this time (default: now)"
    )
    p.add_argument(
        "--report-data", type=hex_bytes(64), metavar="HEX", help="expected REPORT_DATA (SNP, TDX)"
    )


# -- veil attest (a live enclave) ----------------------------------------------------------------


def _attest(args: argparse.Namespace) -> Outcome:
    with client_from_args(args, need_key=False) as client:
        enclave = client.attest()
    report = enclave.report
    if isinstance(report, VerifiedSnpReport):
        lines = [f"verified sev-snp enclave ({report.product.value}, TCB {report.reported_tcb})"]
    else:
        lines = [f"verified tdx enclave (TCB {report.tcb_status.value})"]
    lines.append(f"measurement {enclave.measurement}")
    if enclave.insecure_root:
        lines.append("WARNING: verified under a test root, not AMD's: no hardware guarantee")
    return Outcome(_attested_json(enclave), "\n".join(lines))


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


# -- the step trace --------------------------------------------------------------------------


@dataclass
class _Trace:
    steps: list[dict[str, Any]] = field(default_factory=list)

    def ok(self, step: str, detail: str) -> None:
        self.steps.append({"step": step, "ok": True, "detail": detail})

    def failed(self, step: str, exc: AttestationError) -> None:
        self.steps.append(
            {"step": step, "ok": False, "reason": exc.reason.value, "detail": exc.detail}
        )

    def run(self, step: str, fn: Callable[[], T], detail: Callable[[T], str]) -> T:
        try:
            value = fn()
        except AttestationError as exc:
            self.failed(step, exc)
            raise
        self.ok(step, detail(value))
        return value


# -- inputs ----------------------------------------------------------------------------------


def _evidence_bytes(raw: bytes) -> bytes:
    """Binary evidence, or the same as hex text (as nvtrust saves it)."""
    text = raw.strip()
    if text and len(text) % 2 == 0:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    return raw


def _detect(raw: bytes) -> str:
    """The evidence type, by content; what is none of the three is refused as malformed."""
    if len(raw) > 48 and raw[0:2] in (b"\x04\x00", b"\x05\x00") and raw[4:8] == b"\x81\0\0\0":
        return "tdx"
    if raw[:1] in (b"\x10", b"\x11", b"\x12", b"\x13") and raw[1:2] == b"\xe0":
        return "nvidia-gpu"
    # An SNP ATTESTATION_REPORT starts with its version (2, 3 or 5, little-endian u32): a
    # truncated or padded one is still recognised, so the parser can say what is wrong with it.
    if len(raw) == SNP_REPORT_BYTES or (
        len(raw) >= 4 and struct.unpack_from("<I", raw)[0] in (2, 3, 4, 5)
    ):
        return "sev-snp"
    raise AttestationError(
        AttestationFailure.MALFORMED,
        f"{len(raw)} bytes that are neither a SEV-SNP report, a TDX quote nor SPDM evidence "
        "(pass --tee if you know which it is)",
    )


def _explicit_root(args: argparse.Namespace) -> Path | None:
    """The trust root file for TDX and GPU evidence (``--trust-root`` or ``$VEIL_TRUST_ROOT``)."""
    found = trust_root_file(args)
    return None if found is None else found[0]


def _policy(args: argparse.Namespace) -> PolicyFile | None:
    if args.policy is None:
        if args.policy_key or args.release:
            raise UsageError("--policy-key and --release need --policy")
        return None
    if args.trust_root is not None or args.expect_measurement or args.allow_debug:
        raise UsageError(
            "--policy already pins roots, measurements and debug: drop --trust-root, "
            "--expect-measurement and --allow-debug"
        )
    data = read_input(args.policy, "--policy")
    if args.policy_key:
        try:
            keys = [load_policy_key(read_input(k, "--policy-key")) for k in args.policy_key]
        except ConfigError as exc:
            raise UsageError(f"--policy-key: {exc}", reason=ConfigFailure.MALFORMED) from None
        policy = load_signed_policy(args.policy, keys)
    else:
        warn("--policy without --policy-key: its signature is not checked")
        policy = parse_policy(data, source=args.policy.name, base_dir=args.policy.parent)
    return policy.for_release(args.release) if args.release else policy


# -- SEV-SNP ---------------------------------------------------------------------------------

_SNP_STEPS = ("chain", "report_signature", "vcek_binding", "policy")
_SNP_STEP_OF = {
    AttestationFailure.UNTRUSTED_ROOT: "chain",
    AttestationFailure.BAD_CHAIN: "chain",
    AttestationFailure.CERT_EXPIRED: "chain",
    AttestationFailure.MALFORMED: "report_signature",
    AttestationFailure.BAD_SIGNATURE: "report_signature",
    AttestationFailure.CERT_MISMATCH: "vcek_binding",
    AttestationFailure.UNSUPPORTED: "vcek_binding",
}


def snp_json(report: VerifiedSnpReport) -> dict[str, Any]:
    tcb = report.reported_tcb
    return {
        "tee": report.tee,
        "product": report.product.value,
        "measurement": report.measurement.hex(),
        "report_data": report.report_data.hex(),
        "host_data": report.host_data.hex(),
        "chip_id": report.chip_id.hex(),
        "reported_tcb": {
            "bootloader": tcb.bootloader,
            "tee": tcb.tee,
            "snp": tcb.snp,
            "microcode": tcb.microcode,
            "fmc": tcb.fmc,
        },
        "vmpl": report.vmpl,
        "guest_policy": hex(report.policy),
        "report_version": report.version,
        "root_fingerprint": report.root_fingerprint,
        "insecure_root": report.insecure_root,
        "verified_at": report.verified_at.isoformat(),
    }


def _verify_snp(
    args: argparse.Namespace,
    raw: bytes,
    policy_file: PolicyFile | None,
    now: datetime,
    trace: _Trace,
) -> dict[str, Any]:
    if args.certs is None:
        raise UsageError("--tee sev-snp needs --certs (ASK+ARK chain or VCEK+ASK+ARK bundle)")
    blobs = [read_input(args.certs, "--certs")]
    if args.vcek is not None:
        blobs.insert(0, read_input(args.vcek, "--vcek"))
    if policy_file is not None:
        policy_file.require("sev-snp")
        assert policy_file.snp is not None  # parse_policy requires [snp] for sev-snp
        policy = policy_file.snp
    else:
        policy = replace(attestation_policy(args), allow_debug=args.allow_debug)
    expected: bytes | None = args.report_data
    policy = replace(policy, require_key_binding=expected is not None)
    report = trace.run(
        "parse",
        lambda: SnpReport.from_bytes(raw),
        lambda r: f"1184-byte ATTESTATION_REPORT v{r.version}, VMPL {r.vmpl}",
    )
    chain = trace.run(
        "certificates",
        lambda: SnpCertChain.from_pem(*blobs),
        lambda c: f"VCEK {'+ ASK ' if c.ask else ''}{'+ ARK ' if c.ark else ''}loaded",
    )
    try:
        verified = verify_snp_report(report, chain, policy, now=now, expected_report_data=expected)
    except AttestationError as exc:
        failed = _SNP_STEP_OF.get(exc.reason, "policy")
        for step in _SNP_STEPS[: _SNP_STEPS.index(failed)]:
            trace.ok(step, "passed (checked before the failing step)")
        trace.failed(failed, exc)
        raise
    tcb = verified.reported_tcb
    trace.ok(
        "chain",
        f"VCEK <- ASK <- pinned ARK (sha256 {verified.root_fingerprint[:16]}...), "
        f"{verified.product.value}, valid at {now.isoformat()}"
        + (" [TEST ROOT: no hardware guarantee]" if verified.insecure_root else ""),
    )
    trace.ok("report_signature", "ECDSA P-384/SHA-384 by the VCEK over bytes 0x000..0x29F")
    trace.ok("vcek_binding", f"VCEK hwID == CHIP_ID, VCEK TCB == REPORTED_TCB ({tcb})")
    policy_bits = [
        "debug forbidden" if not policy.allow_debug else "debug ALLOWED",
        f"measurement {'pinned' if policy.expected_measurements else 'not pinned'}",
        f"VMPL {verified.vmpl} in {sorted(policy.allowed_vmpls)}",
    ]
    if policy.min_tcb is not None:
        policy_bits.append(f"TCB >= {policy.min_tcb}")
    if expected is not None:
        policy_bits.append("REPORT_DATA == expected")
    trace.ok("policy", "; ".join(policy_bits))
    return snp_json(verified)


# -- TDX -------------------------------------------------------------------------------------


def _verify_tdx(
    args: argparse.Namespace,
    raw: bytes,
    policy_file: PolicyFile | None,
    now: datetime,
    trace: _Trace,
) -> dict[str, Any]:
    from veil.sdk.attestation.tdx import (
        TdxCollateral,
        TdxPolicy,
        TdxQuote,
        evaluate_tcb,
        select_qe_identity,
        select_tcb_info,
        verify_tdx_quote,
        verify_tdx_signature,
    )

    if not args.collateral:
        raise UsageError("--tee tdx needs --collateral DIR (Intel PCS responses)")
    for folder in args.collateral:
        if not folder.is_dir():
            raise UsageError(
                f"--collateral {folder}: no such folder", reason=ConfigFailure.MISSING_FILE
            )
    try:
        collateral = TdxCollateral.from_dir(args.collateral[0])
        for extra in args.collateral[1:]:
            collateral = collateral.merged(TdxCollateral.from_dir(extra))
    except OSError as exc:
        raise UsageError(
            f"--collateral: cannot read ({exc.strerror or exc})", reason=ConfigFailure.UNREADABLE
        ) from None
    kwargs: dict[str, Any] = {}
    if args.report_data is not None:
        kwargs["report_data"] = args.report_data
    if policy_file is not None:
        policy_file.require("tdx")
        assert policy_file.tdx is not None
        policy = replace(policy_file.tdx, **kwargs)
    else:
        if args.expect_measurement:
            kwargs["mrtd"] = frozenset(bytes.fromhex(m) for m in args.expect_measurement)
        else:
            warn(ANY_MEASUREMENT)
        kwargs["allow_debug"] = args.allow_debug
        root = _explicit_root(args)
        if root is not None:
            policy = TdxPolicy.with_test_root(read_input(root, "--trust-root"), **kwargs)
        else:
            policy = TdxPolicy.production(**kwargs)
    quote = trace.run(
        "parse",
        lambda: TdxQuote.from_bytes(raw),
        lambda q: f"DCAP quote v{q.version}, PCK chain of {len(q.signature.pck_chain)} certs",
    )
    if policy.insecure:
        warn_insecure("TDX verification trusts a root that is not the Intel SGX Root CA")
    with warnings.catch_warnings():
        # The verifiers warn on every call under a test root; the warning above says it once.
        warnings.simplefilter("ignore", InsecureModeWarning)
        proven = trace.run(
            "signature",
            lambda: verify_tdx_signature(quote, policy.roots, now, collateral),
            lambda p: (
                "PCK chain to the pinned root with current CRLs (not revoked); QE report "
                "signed by the PCK and binding the attestation key; quote signed by that key "
                f"(FMSPC {p.pck.fmspc.hex()})"
            ),
        )
        tcb_info = trace.run(
            "tcb_info",
            lambda: select_tcb_info(collateral, proven.pck.fmspc, proven.pck.pce_id, policy, now),
            lambda t: (
                f"TCB Info for FMSPC {t.fmspc.hex()} signed under the pinned root, "
                f"current until {t.next_update.isoformat()}"
            ),
        )
        qe_identity = trace.run(
            "qe_identity",
            lambda: select_qe_identity(collateral, policy, now),
            lambda q: f"TD_QE identity signed, current until {q.next_update.isoformat()}",
        )
        trace.run(
            "tcb_evaluation",
            lambda: evaluate_tcb(quote, proven.pck, tcb_info, qe_identity),
            lambda e: (
                f"converged TCB status {e.status.value} (platform "
                f"{e.platform_status.value}, QE {e.qe_status.value if e.qe_status else '-'})"
            ),
        )
        verified = trace.run(
            "policy",
            lambda: verify_tdx_quote(quote, collateral, policy, now=now),
            lambda v: (
                f"status {v.tcb_status.value} accepted "
                f"({', '.join(sorted(s.value for s in policy.accepted_tcb_statuses))}); debug "
                f"{'allowed' if policy.allow_debug else 'off'}; pinned: {_tdx_pins(policy)}"
            ),
        )
    doc = {
        "tee": "tdx",
        "quote_version": verified.version,
        "mr_td": verified.mr_td.hex(),
        "rtmrs": [r.hex() for r in verified.rtmrs],
        "mr_seam": verified.mr_seam.hex(),
        "report_data": verified.report_data.hex(),
        "tcb_status": verified.tcb_status.value,
        "platform_tcb_status": verified.platform_tcb_status.value,
        "qe_tcb_status": verified.qe_tcb_status.value,
        "fmspc": verified.fmspc.hex(),
        "advisory_ids": list(verified.advisory_ids),
        "collateral_expires": verified.collateral_expires.isoformat(),
        "debug": verified.debug,
        "insecure_root": policy.insecure,
        "verified_at": verified.verified_at.isoformat(),
    }
    return doc


def _tdx_pins(policy: Any) -> str:
    names = ("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mrseam", "report_data")
    pinned = [n.upper() for n in names if getattr(policy, n) is not None]
    return ", ".join(pinned) or "nothing (any TD accepted)"


# -- NVIDIA GPU ------------------------------------------------------------------------------


def _load_root(path: Path | None) -> x509.Certificate | None:
    if path is None:
        return None
    try:
        return x509.load_pem_x509_certificate(read_input(path, "--trust-root"))
    except ValueError:
        raise UsageError(
            f"--trust-root {path} is not a PEM certificate", reason=ConfigFailure.MALFORMED
        ) from None


def _verify_gpu(
    args: argparse.Namespace,
    raw: bytes,
    policy_file: PolicyFile | None,
    now: datetime,
    trace: _Trace,
) -> dict[str, Any]:
    from veil.sdk.attestation.nvidia import (
        DirectoryRimStore,
        SpdmEvidence,
        verify_gpu_evidence,
        verify_rim,
        verify_spdm_signature,
    )

    if args.certs is None:
        raise UsageError("--tee nvidia-gpu needs --certs (the device certificate chain, PEM)")
    chain = read_input(args.certs, "--certs")
    device_root = _load_root(_explicit_root(args))
    rim_root = None
    rim_dir = args.rims
    if policy_file is not None:
        policy_file.require("nvidia-gpu")
        assert policy_file.gpu is not None
        device_root, rim_root = policy_file.gpu.device_root, policy_file.gpu.rim_root
        rim_dir = rim_dir or policy_file.gpu.rim_dir
    if not args.rim and rim_dir is None:
        raise UsageError("--tee nvidia-gpu needs reference values: --rims DIR or --rim FILE")
    evidence = trace.run(
        "parse",
        lambda: SpdmEvidence.from_bytes(raw),
        lambda e: (
            f"SPDM GET_MEASUREMENTS, {len(e.measurements())} measurement blocks, "
            f"driver {e.driver_version or '?'}, VBIOS {e.vbios_version or '?'}"
        ),
    )
    documents: list[tuple[str, bytes]] = []
    if args.rim:
        documents = [(str(p.name), read_input(p, "--rim")) for p in args.rim]
    else:
        store = DirectoryRimStore(rim_dir)
        for rim_id in evidence.rim_ids:
            document = trace.run(
                f"rim_lookup:{rim_id}", partial(store.get, rim_id), lambda _: "found in cache"
            )
            documents.append((rim_id, document))
    rims = []
    for name, document in documents:
        rim = trace.run(
            f"rim:{name}",
            partial(verify_rim, document, now=now, root=rim_root),
            lambda r: (
                f"XML-DSig to the pinned RIM root; {r.tag_id} v{r.version}, "
                f"{len(r.measurements)} golden values"
            ),
        )
        rims.append(rim)
    trace.run(
        "signature_chain",
        lambda: verify_spdm_signature(evidence, chain, now=now, root=device_root),
        lambda p: (
            f"{len(p.chain)}-certificate chain to the pinned device root; "
            "ECDSA P-384 signature over request || response"
        ),
    )
    if args.nonce is not None:
        nonce: bytes = args.nonce

        def check_nonce() -> None:
            if not hmac.compare_digest(evidence.nonce, nonce):
                raise AttestationError(
                    AttestationFailure.STALE_NONCE,
                    "GPU evidence was not made for the expected nonce",
                )

        trace.run("nonce", check_nonce, lambda _: "the SPDM request carries --nonce")
    else:
        nonce = evidence.nonce
        warn("no --nonce: the GPU evidence's freshness is NOT checked")
        trace.steps.append(
            {"step": "nonce", "ok": True, "skipped": True, "detail": "no --nonce: not checked"}
        )
    verified = trace.run(
        "measurements",
        lambda: verify_gpu_evidence(
            evidence, chain, nonce=nonce, rims=rims, now=now, root=device_root
        ),
        lambda v: f"every active golden value of {len(rims)} RIM(s) matched",
    )
    doc = {
        "tee": "nvidia-gpu",
        "nonce": verified.nonce.hex(),
        "nonce_checked": args.nonce is not None,
        "driver_version": verified.driver_version,
        "vbios_version": verified.vbios_version,
        "device_certificate_sha256": verified.device_certificate_sha256.hex(),
        "rim_ids": list(verified.rim_ids),
        "insecure_root": device_root is not None or rim_root is not None,
        "verified_at": verified.verified_at.isoformat(),
    }
    return doc


# -- the command -----------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> Outcome:
    """``veil attest verify``: 0 verified; 1 refused (malformed evidence included); 2 usage."""
    trace = _Trace()
    raw = _evidence_bytes(read_input(args.report, "evidence"))
    now: datetime = args.at or datetime.now(UTC)
    policy_file = _policy(args)
    tee = args.tee
    verify = {"sev-snp": _verify_snp, "tdx": _verify_tdx, "nvidia-gpu": _verify_gpu}
    try:
        tee = tee or _detect(raw)
        doc = verify[tee](args, raw, policy_file, now, trace)
    except AttestationError as exc:
        raise Rejected(exc, verified=False, tee=tee, steps=trace.steps) from None
    doc["verified"] = True
    doc["steps"] = trace.steps
    lines = [f"  ok  {step['step']}: {step['detail']}" for step in trace.steps]
    what = doc.get("product") or doc.get("tcb_status") or doc.get("driver_version") or ""
    lines.append(f"verified {doc['tee']} evidence {what}".rstrip())
    if doc.get("insecure_root"):
        lines.append("WARNING: verified under a test root, not the vendor's: no hardware guarantee")
    return Outcome(doc, "\n".join(lines))
