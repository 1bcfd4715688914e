"""Verify a TDX quote against Intel collateral and a ``TdxPolicy``; fail closed.

Order of checks (each raises ``AttestationError`` with a precise reason):

1. PCK chain → pinned root (validity at ``now``), CRLs from the collateral: root CA CRL and the
   PCK CA's CRL must be present, signed, current, and not list the PCK or its CA (REVOKED).
2. QE report signed by the PCK key; QE REPORTDATA = SHA-256(attestation key ‖ QE auth data) ‖ 0s.
3. Quote signature by the attestation key over header ‖ (v5 body descriptor) ‖ body.
4. TCB Info for the PCK's FMSPC and the TD_QE identity: signatures over their exact JSON bytes,
   signer chains to the pinned root, issueDate ≤ now ≤ nextUpdate (and policy max age).
5. TCB level matching (SGX components + PCESVN from the PCK certificate, TDX components from
   TEE_TCB_SVN), TDX module identity, QE identity → one converged status.
6. Policy: accepted statuses, DEBUG attribute, MRTD / RTMR / MRSEAM allowlists, REPORT_DATA.

Collateral that is missing (no TCB Info for the FMSPC, no CRL for an issuer, no QE identity) is
reported with reason ``POLICY`` and a message starting "missing collateral".
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from veil.sdk.attestation.tdx._collateral import (
    QeIdentity,
    TcbInfo,
    TcbLevel,
    TcbStatus,
    TdxCollateral,
)
from veil.sdk.attestation.tdx._pck import PckExtensions
from veil.sdk.attestation.tdx._policy import TdxPolicy, is_production_root
from veil.sdk.attestation.tdx._quote import INTEL_QE_VENDOR_ID, TdxQuote
from veil.sdk.attestation.tdx._x509 import check_not_revoked, verify_chain, verify_crl
from veil.sdk.errors import AttestationError, AttestationFailure, warn_insecure

__all__ = [
    "TcbEvaluation",
    "VerifiedTdxQuote",
    "VerifiedTdxSignature",
    "evaluate_tcb",
    "select_qe_identity",
    "select_tcb_info",
    "verify_tdx_quote",
    "verify_tdx_signature",
]


def _fail(reason: AttestationFailure, message: str) -> AttestationError:
    return AttestationError(reason, message)


def _ecdsa_p256_verify(key: ec.EllipticCurvePublicKey, raw_sig: bytes, data: bytes) -> bool:
    sig = encode_dss_signature(
        int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:64], "big")
    )
    try:
        key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class VerifiedTdxSignature:
    """Proven by the quote's own signature data: chain, QE binding and quote signature."""

    pck_certificate: x509.Certificate
    pck_path: tuple[x509.Certificate, ...]
    pck: PckExtensions


def _check_crls(
    path: tuple[x509.Certificate, ...], collateral: TdxCollateral, now: datetime
) -> None:
    """Every certificate below the root must be covered by a current CRL of its issuer.

    Used for the PCK chain and for the TCB signing chain of TCB Info and QE Identity.
    """
    for cert, issuer in itertools.pairwise(path):
        candidates = [c for c in collateral.crls if c.issuer == issuer.subject]
        what = f"CRL of '{issuer.subject.rfc4514_string()}'"
        if not candidates:
            raise _fail(AttestationFailure.POLICY, f"missing collateral: no {what}")
        last: AttestationError | None = None
        current = None
        for crl in sorted(candidates, key=lambda c: c.last_update_utc, reverse=True):
            try:
                verify_crl(crl, issuer, now, what)
            except AttestationError as exc:
                last = last if last and last.reason is not AttestationFailure.EXPIRED else exc
                continue
            current = crl
            break
        if current is None:
            assert last is not None
            raise last
        check_not_revoked(cert, current, "PCK chain")


def verify_tdx_signature(
    quote: TdxQuote,
    roots: tuple[x509.Certificate, ...],
    now: datetime,
    collateral: TdxCollateral | None = None,
) -> VerifiedTdxSignature:
    """Steps 1-3: PCK chain (and CRLs when ``collateral`` is given), QE report, quote signature.

    Proves the quote came from a genuine QE on a certified platform, nothing about its TCB: use
    ``verify_tdx_quote`` to accept a TD. Warns every time a pinned root is not Intel's.
    """
    if not all(is_production_root(r) for r in roots):
        warn_insecure("TDX verification trusts a root that is not the Intel SGX Root CA")
    return _verify_signature(quote, roots, now, collateral)


def _verify_signature(
    quote: TdxQuote,
    roots: tuple[x509.Certificate, ...],
    now: datetime,
    collateral: TdxCollateral | None,
) -> VerifiedTdxSignature:
    sig = quote.signature
    if quote.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise _fail(
            AttestationFailure.UNSUPPORTED,
            f"QE vendor id is {quote.qe_vendor_id.hex()}, expected Intel's",
        )
    leaves = [c for c in sig.pck_chain if not _is_ca(c)]
    if len(leaves) != 1:
        raise _fail(
            AttestationFailure.BAD_CHAIN,
            f"PCK chain has {len(leaves)} end-entity certificates, expected 1",
        )
    leaf = leaves[0]
    path = verify_chain(leaf, sig.pck_chain, list(roots), now, "PCK chain")
    if collateral is not None:
        _check_crls(path, collateral, now)
    pck = PckExtensions.from_certificate(leaf)
    pck_key = leaf.public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey):
        raise _fail(AttestationFailure.BAD_CHAIN, "PCK certificate key is not ECDSA")
    if not _ecdsa_p256_verify(pck_key, sig.qe_report_signature, sig.qe_report.raw):
        raise _fail(
            AttestationFailure.BAD_SIGNATURE,
            "QE report signature does not verify under the PCK certificate",
        )
    expected = hashlib.sha256(sig.attestation_key + sig.qe_auth_data).digest() + bytes(32)
    if not hmac.compare_digest(expected, sig.qe_report.report_data):
        raise _fail(
            AttestationFailure.UNBOUND_KEY,
            "QE report REPORTDATA is not SHA-256(attestation key || QE auth data) || zeros",
        )
    try:
        att_key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(sig.attestation_key[:32], "big"),
            int.from_bytes(sig.attestation_key[32:], "big"),
            ec.SECP256R1(),
        ).public_key()
    except ValueError as exc:
        raise _fail(AttestationFailure.MALFORMED, "attestation key is not a P-256 point") from exc
    if not _ecdsa_p256_verify(att_key, sig.signature, quote.signed_bytes):
        raise _fail(
            AttestationFailure.BAD_SIGNATURE,
            "quote signature does not verify under the attestation key",
        )
    return VerifiedTdxSignature(pck_certificate=leaf, pck_path=path, pck=pck)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _current(issue: datetime, next_update: datetime, now: datetime) -> bool:
    return issue <= now <= next_update


def select_tcb_info(
    collateral: TdxCollateral,
    fmspc: bytes,
    pce_id: bytes,
    policy: TdxPolicy,
    now: datetime,
) -> TcbInfo:
    """The current, signed TCB Info for ``fmspc`` (highest evaluation number wins)."""
    matching = [t for t in collateral.tcb_infos if t.fmspc == fmspc and t.pce_id == pce_id]
    if not matching:
        have = sorted({t.fmspc.hex() for t in collateral.tcb_infos})
        raise _fail(
            AttestationFailure.POLICY,
            f"missing collateral: no TDX TCB Info for FMSPC {fmspc.hex()} "
            f"(collateral has {', '.join(have) or 'none'})",
        )
    current = [t for t in matching if _current(t.issue_date, t.next_update, now)]
    if not current:
        t = max(matching, key=lambda x: x.next_update)
        raise _fail(
            AttestationFailure.EXPIRED,
            f"TCB Info for FMSPC {fmspc.hex()} is valid {t.issue_date.isoformat()}.."
            f"{t.next_update.isoformat()}, not at {now.isoformat()}",
        )
    best = max(current, key=lambda x: x.tcb_evaluation_data_number)
    _check_age(best.issue_date, policy, now, "TCB Info")
    path = best.signed.verify(collateral.certificates, list(policy.roots), now, "TCB Info")
    _check_crls(path, collateral, now)
    return best


def select_qe_identity(collateral: TdxCollateral, policy: TdxPolicy, now: datetime) -> QeIdentity:
    """The current, signed TD_QE identity (highest evaluation number wins)."""
    if not collateral.qe_identities:
        raise _fail(AttestationFailure.POLICY, "missing collateral: no TD_QE identity")
    current = [q for q in collateral.qe_identities if _current(q.issue_date, q.next_update, now)]
    if not current:
        q = max(collateral.qe_identities, key=lambda x: x.next_update)
        raise _fail(
            AttestationFailure.EXPIRED,
            f"QE Identity is valid {q.issue_date.isoformat()}..{q.next_update.isoformat()}, "
            f"not at {now.isoformat()}",
        )
    best = max(current, key=lambda x: x.tcb_evaluation_data_number)
    _check_age(best.issue_date, policy, now, "QE Identity")
    path = best.signed.verify(collateral.certificates, list(policy.roots), now, "QE Identity")
    _check_crls(path, collateral, now)
    return best


def _check_age(issued: datetime, policy: TdxPolicy, now: datetime, what: str) -> None:
    if policy.max_collateral_age is not None and now - issued > policy.max_collateral_age:
        raise _fail(
            AttestationFailure.EXPIRED,
            f"{what} was issued {issued.isoformat()}, older than the policy's maximum age "
            f"{policy.max_collateral_age}",
        )


_CONFIG = {TcbStatus.CONFIGURATION_NEEDED, TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED}


def _converge(platform: TcbStatus, other: TcbStatus) -> TcbStatus:
    """Fold a QE or TDX-module status into the platform status (Intel's convergence rules)."""
    if other is TcbStatus.REVOKED or platform is TcbStatus.REVOKED:
        return TcbStatus.REVOKED
    if other is TcbStatus.OUT_OF_DATE:
        if platform in _CONFIG or platform is TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED:
            return TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
        return TcbStatus.OUT_OF_DATE
    return platform


@dataclass(frozen=True)
class TcbEvaluation:
    """Result of TCB level matching for one quote."""

    status: TcbStatus
    platform_status: TcbStatus
    module_status: TcbStatus | None
    qe_status: TcbStatus | None
    tcb_date: datetime
    advisory_ids: tuple[str, ...]


def _match_level(levels: tuple[TcbLevel, ...], pck: PckExtensions, tee_tcb_svn: bytes) -> TcbLevel:
    start = 2 if tee_tcb_svn[1] > 0 else 0
    for level in levels:
        sgx_ok = (
            all(a >= b for a, b in zip(pck.sgx_tcb_components, level.sgx_components, strict=True))
            and pck.pce_svn >= level.pce_svn
        )
        tdx_ok = all(tee_tcb_svn[i] >= level.tdx_components[i] for i in range(start, 16))
        if sgx_ok and tdx_ok:
            return level
    raise _fail(
        AttestationFailure.TCB_TOO_LOW,
        f"no TCB level of FMSPC {pck.fmspc.hex()} matches PCESVN {pck.pce_svn}, "
        f"SGX components {list(pck.sgx_tcb_components)} and TEE_TCB_SVN {tee_tcb_svn.hex()}",
    )


def evaluate_tcb(
    quote: TdxQuote,
    pck: PckExtensions,
    tcb_info: TcbInfo,
    qe_identity: QeIdentity | None,
) -> TcbEvaluation:
    """Match the platform, TDX module and (if given) QE against already-verified collateral."""
    body = quote.body
    if tcb_info.fmspc != pck.fmspc:
        raise _fail(
            AttestationFailure.CERT_MISMATCH,
            f"TCB Info is for FMSPC {tcb_info.fmspc.hex()}, the PCK certifies {pck.fmspc.hex()}",
        )
    level = _match_level(tcb_info.tcb_levels, pck, body.tee_tcb_svn)
    advisories = list(level.advisory_ids)
    status = level.status
    module_status: TcbStatus | None = None
    major = body.tee_tcb_svn[1]
    if major > 0 and tcb_info.module_identities:
        ident_id = f"TDX_{major:02X}"
        ident = next((m for m in tcb_info.module_identities if m.id.upper() == ident_id), None)
        if ident is None:
            raise _fail(
                AttestationFailure.TCB_TOO_LOW,
                f"TCB Info has no TDX module identity {ident_id}",
            )
        _check_module(
            body.mr_signer_seam,
            body.seam_attributes,
            ident.mrsigner,
            ident.attributes,
            ident.attributes_mask,
        )
        svn = body.tee_tcb_svn[0]
        mod = next((lv for lv in ident.tcb_levels if lv[0] <= svn), None)
        if mod is None:
            raise _fail(
                AttestationFailure.TCB_TOO_LOW,
                f"TDX module {ident_id} ISVSVN {svn} is below every TCB level",
            )
        module_status = mod[1]
        advisories.extend(mod[2])
        status = _converge(status, module_status)
    elif tcb_info.module_mrsigner is not None:
        assert tcb_info.module_attributes is not None
        assert tcb_info.module_attributes_mask is not None
        _check_module(
            body.mr_signer_seam,
            body.seam_attributes,
            tcb_info.module_mrsigner,
            tcb_info.module_attributes,
            tcb_info.module_attributes_mask,
        )
    qe_status: TcbStatus | None = None
    if qe_identity is not None:
        qe_status, qe_adv = _evaluate_qe(quote, qe_identity)
        advisories.extend(qe_adv)
        status = _converge(status, qe_status)
    return TcbEvaluation(
        status=status,
        platform_status=level.status,
        module_status=module_status,
        qe_status=qe_status,
        tcb_date=level.tcb_date,
        advisory_ids=tuple(dict.fromkeys(advisories)),
    )


def _check_module(
    mr_signer_seam: bytes, seam_attrs: bytes, mrsigner: bytes, attrs: bytes, mask: bytes
) -> None:
    if mr_signer_seam != mrsigner:
        raise _fail(
            AttestationFailure.MEASUREMENT_MISMATCH,
            f"MRSIGNERSEAM {mr_signer_seam.hex()} is not the TDX module signer in TCB Info",
        )
    masked = bytes(a & m for a, m in zip(seam_attrs, mask, strict=True))
    if masked != attrs:
        raise _fail(
            AttestationFailure.MEASUREMENT_MISMATCH,
            f"SEAMATTRIBUTES {seam_attrs.hex()} do not match TCB Info's {attrs.hex()}",
        )


def _evaluate_qe(quote: TdxQuote, qe: QeIdentity) -> tuple[TcbStatus, tuple[str, ...]]:
    report = quote.signature.qe_report
    if report.mr_signer != qe.mrsigner:
        raise _fail(AttestationFailure.MEASUREMENT_MISMATCH, "QE MRSIGNER is not Intel's TD_QE")
    if report.isv_prod_id != qe.isv_prod_id:
        raise _fail(
            AttestationFailure.MEASUREMENT_MISMATCH,
            f"QE ISVPRODID is {report.isv_prod_id}, QE Identity says {qe.isv_prod_id}",
        )
    masked_misc = bytes(a & m for a, m in zip(report.misc_select, qe.miscselect_mask, strict=True))
    if masked_misc != qe.miscselect:
        raise _fail(AttestationFailure.MEASUREMENT_MISMATCH, "QE MISCSELECT does not match")
    masked = bytes(a & m for a, m in zip(report.attributes, qe.attributes_mask, strict=True))
    if masked != qe.attributes:
        raise _fail(AttestationFailure.MEASUREMENT_MISMATCH, "QE ATTRIBUTES do not match")
    level = next((lv for lv in qe.tcb_levels if lv.isv_svn <= report.isv_svn), None)
    if level is None:
        raise _fail(
            AttestationFailure.TCB_TOO_LOW, f"QE ISVSVN {report.isv_svn} is below every level"
        )
    return level.status, level.advisory_ids


@dataclass(frozen=True)
class VerifiedTdxQuote:
    """What a verified TDX quote proves. Only built by ``verify_tdx_quote``."""

    version: int
    mr_td: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    mr_seam: bytes
    mr_signer_seam: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    td_attributes: bytes
    xfam: bytes
    tee_tcb_svn: bytes
    report_data: bytes
    tcb_status: TcbStatus
    platform_tcb_status: TcbStatus
    qe_tcb_status: TcbStatus
    module_tcb_status: TcbStatus | None
    tcb_date: datetime
    fmspc: bytes
    advisory_ids: tuple[str, ...]
    collateral_expires: datetime
    verified_at: datetime
    debug: bool
    mr_service_td: bytes | None = None
    insecure_root: bool = False  # verified under a root that is not Intel's (a test root)


def _allowed(value: bytes, allow: frozenset[bytes] | None, name: str) -> None:
    if allow is not None and value not in allow:
        raise _fail(
            AttestationFailure.MEASUREMENT_MISMATCH,
            f"{name} {value.hex()} is not in the policy's allowlist",
        )


def verify_tdx_quote(
    quote: TdxQuote | bytes,
    collateral: TdxCollateral,
    policy: TdxPolicy,
    *,
    now: datetime,
) -> VerifiedTdxQuote:
    """Verify ``quote`` end to end at time ``now`` (timezone-aware); return what it proves."""
    if now.tzinfo is None:
        raise _fail(AttestationFailure.POLICY, "now must be timezone-aware")
    if policy.insecure:
        warn_insecure("TDX verification trusts a root that is not the Intel SGX Root CA")
    if not isinstance(quote, TdxQuote):
        quote = TdxQuote.from_bytes(quote)
    proven = _verify_signature(quote, policy.roots, now, collateral)
    pck = proven.pck
    tcb_info = select_tcb_info(collateral, pck.fmspc, pck.pce_id, policy, now)
    qe_identity = select_qe_identity(collateral, policy, now)
    tcb = evaluate_tcb(quote, pck, tcb_info, qe_identity)
    assert tcb.qe_status is not None
    if tcb.status not in policy.accepted_tcb_statuses:
        reason = (
            AttestationFailure.REVOKED
            if tcb.status is TcbStatus.REVOKED
            else AttestationFailure.TCB_TOO_LOW
        )
        raise _fail(
            reason,
            f"TCB status is {tcb.status.value} (platform {tcb.platform_status.value}, "
            f"QE {tcb.qe_status.value}); policy accepts "
            f"{', '.join(sorted(s.value for s in policy.accepted_tcb_statuses))}",
        )
    body = quote.body
    if body.debug and not policy.allow_debug:
        raise _fail(
            AttestationFailure.DEBUG_ENCLAVE,
            f"TD attributes {body.td_attributes.hex()} have DEBUG (bit 0) set",
        )
    _allowed(body.mr_seam, policy.mrseam, "MRSEAM")
    _allowed(body.mr_td, policy.mrtd, "MRTD")
    for i, (value, allow) in enumerate(
        zip(body.rtmrs, (policy.rtmr0, policy.rtmr1, policy.rtmr2, policy.rtmr3), strict=True)
    ):
        _allowed(value, allow, f"RTMR{i}")
    if policy.report_data is not None and not hmac.compare_digest(
        policy.report_data, body.report_data
    ):
        raise _fail(
            AttestationFailure.STALE_NONCE,
            "REPORTDATA is not the expected value (stale or replayed quote?)",
        )
    return VerifiedTdxQuote(
        version=quote.version,
        mr_td=body.mr_td,
        rtmrs=body.rtmrs,
        mr_seam=body.mr_seam,
        mr_signer_seam=body.mr_signer_seam,
        mr_config_id=body.mr_config_id,
        mr_owner=body.mr_owner,
        mr_owner_config=body.mr_owner_config,
        td_attributes=body.td_attributes,
        xfam=body.xfam,
        tee_tcb_svn=body.tee_tcb_svn,
        report_data=body.report_data,
        tcb_status=tcb.status,
        platform_tcb_status=tcb.platform_status,
        qe_tcb_status=tcb.qe_status,
        module_tcb_status=tcb.module_status,
        tcb_date=tcb.tcb_date,
        fmspc=pck.fmspc,
        advisory_ids=tcb.advisory_ids,
        collateral_expires=min(tcb_info.next_update, qe_identity.next_update),
        verified_at=now,
        debug=body.debug,
        insecure_root=policy.insecure,
        mr_service_td=body.mr_service_td,
    )
