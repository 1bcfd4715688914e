"""End-to-end TDX verification: real Intel quotes and collateral, one negative test per failure."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from veil.sdk.attestation.tdx import (
    TcbStatus,
    TdxCollateral,
    TdxPolicy,
    TdxQuote,
    evaluate_tcb,
    select_tcb_info,
    verify_tdx_quote,
    verify_tdx_signature,
)
from veil.sdk.errors import AttestationError, AttestationFailure, InsecureModeWarning

# Same list and loader as test_tdx_quote.py (test modules do not import each other).
PRODUCTION_QUOTES = [
    "go-tdx-guest/cos-113-tdx-quote.dat",
    "go-tdx-guest/quote_v5_sample.dat",
    "go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
    "teekit/tdx-v4-azure.b64",
    "teekit/tdx-v4-edgeless.dat",
    "teekit/tdx-v4-gcp.json",
    "teekit/tdx-v4-moemahhouk.dat",
    "teekit/tdx-v4-phala.dat",
    "teekit/tdx-v4-trustee.dat",
    "teekit/tdx-v4-zkdcap.dat",
    "teekit/tdx-v5-trustee.dat",
]


def load_quote_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".b64":
        return base64.b64decode(raw)
    if path.suffix == ".json":
        return base64.b64decode(json.loads(raw)["tdx"]["quote"])
    return raw


# Inside every window of the Jan/Feb 2026 PCS collateral and after the v5 sample's PCK was issued.
T_2026 = datetime(2026, 2, 5, tzinfo=UTC)
# Inside the teekit TCB Info windows (Sep/Oct 2025).
T_2025 = datetime(2025, 10, 1, tzinfo=UTC)
V5 = "tdx/go-tdx-guest/quote_v5_sample.dat"


@pytest.fixture(scope="module")
def tinfoil(vectors: Path) -> TdxCollateral:
    return TdxCollateral.from_dir(vectors / "tdx/tinfoil-collateral")


@pytest.fixture(scope="module")
def every_collateral(vectors: Path, tinfoil: TdxCollateral) -> TdxCollateral:
    out = tinfoil
    for folder in ("go-tdx-guest", "teekit"):
        out = out.merged(TdxCollateral.from_dir(vectors / "tdx" / folder))
    return out


@pytest.fixture(scope="module")
def production() -> TdxPolicy:
    return TdxPolicy.production()


def _reject(reason: AttestationFailure, fn: object, *args: object, **kw: object) -> str:
    assert callable(fn)
    with pytest.raises(AttestationError) as err:
        fn(*args, **kw)
    assert err.value.reason is reason, str(err.value)
    return str(err.value)


def test_v5_sample_verifies_end_to_end(vectors: Path, tinfoil: TdxCollateral) -> None:
    raw = (vectors / V5).read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecureModeWarning)  # the production root never warns
        v = verify_tdx_quote(raw, tinfoil, TdxPolicy.production(), now=T_2026)
    q = TdxQuote.from_bytes(raw)
    assert v.tcb_status is TcbStatus.UP_TO_DATE
    assert v.qe_tcb_status is TcbStatus.UP_TO_DATE
    assert v.fmspc.hex() == "90c06f000000"
    assert v.mr_td == q.body.mr_td and v.report_data == q.body.report_data
    assert v.rtmrs == q.body.rtmrs and v.verified_at == T_2026
    assert v.collateral_expires == datetime(2026, 2, 11, 15, 46, 45, tzinfo=UTC)
    assert not v.debug
    assert not v.insecure_root  # Intel's root


def test_policy_allowlists_accept_matching_values(vectors: Path, tinfoil: TdxCollateral) -> None:
    q = TdxQuote.from_bytes((vectors / V5).read_bytes())
    b = q.body
    policy = TdxPolicy.production(
        mrtd=frozenset({b.mr_td}),
        rtmr0=frozenset({b.rtmr0}),
        rtmr3=frozenset({b.rtmr3}),
        mrseam=frozenset({b.mr_seam}),
        report_data=b.report_data,
        max_collateral_age=timedelta(days=30),
    )
    assert verify_tdx_quote(q, tinfoil, policy, now=T_2026).mr_seam == b.mr_seam


def test_newest_collateral_is_chosen(vectors: Path, every_collateral: TdxCollateral) -> None:
    v = verify_tdx_quote(
        (vectors / V5).read_bytes(), every_collateral, TdxPolicy.production(), now=T_2026
    )
    assert v.tcb_status is TcbStatus.UP_TO_DATE


@pytest.mark.parametrize("name", PRODUCTION_QUOTES)
def test_every_production_quote_signature_and_chain(
    vectors: Path, production: TdxPolicy, name: str
) -> None:
    q = TdxQuote.from_bytes(load_quote_bytes(vectors / "tdx" / name))
    now = max(q.signature.pck_chain[0].not_valid_before_utc, T_2026)
    proven = verify_tdx_signature(q, production.roots, now)
    assert proven.pck_path[-1] == production.roots[0]
    assert len(proven.pck.fmspc) == 6


# FMSPC → (quotes, status) where a signed TCB Info in the vectors covers the platform but the
# QE identity / CRLs of that window are missing: everything up to and including TCB matching.
TEEKIT_TCB = {
    "teekit/tdx-v4-edgeless.dat": TcbStatus.OUT_OF_DATE,
    "teekit/tdx-v4-trustee.dat": TcbStatus.OUT_OF_DATE,
    "teekit/tdx-v4-azure.b64": TcbStatus.UP_TO_DATE,
    "teekit/tdx-v4-gcp.json": TcbStatus.UP_TO_DATE,
    "teekit/tdx-v4-zkdcap.dat": TcbStatus.OUT_OF_DATE,
    "go-tdx-guest/cos-113-tdx-quote.dat": TcbStatus.UP_TO_DATE,
}


def test_spr_e4_is_below_every_2025_level(
    vectors: Path, every_collateral: TdxCollateral, production: TdxPolicy
) -> None:
    q = TdxQuote.from_bytes((vectors / "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat").read_bytes())
    proven = verify_tdx_signature(q, production.roots, T_2025)
    info = select_tcb_info(
        every_collateral, proven.pck.fmspc, proven.pck.pce_id, production, T_2025
    )
    msg = _reject(AttestationFailure.TCB_TOO_LOW, evaluate_tcb, q, proven.pck, info, None)
    assert "FMSPC 50806f000000" in msg


@pytest.mark.parametrize("name", sorted(TEEKIT_TCB))
def test_teekit_window_tcb_matching(
    vectors: Path, every_collateral: TdxCollateral, production: TdxPolicy, name: str
) -> None:
    q = TdxQuote.from_bytes(load_quote_bytes(vectors / "tdx" / name))
    now = max(q.signature.pck_chain[0].not_valid_before_utc, T_2025)
    proven = verify_tdx_signature(q, production.roots, now)
    info = select_tcb_info(every_collateral, proven.pck.fmspc, proven.pck.pce_id, production, now)
    assert info.issue_date.year == 2025
    tcb = evaluate_tcb(q, proven.pck, info, None)
    assert tcb.platform_status is TEEKIT_TCB[name]
    # The full verifier fails closed on the missing window, naming what is out of date.
    msg = _reject(
        AttestationFailure.EXPIRED, verify_tdx_quote, q, every_collateral, production, now=now
    )
    assert "CRL" in msg and "2023-07-08" in msg


def test_platform_below_every_tcb_level(vectors: Path, tinfoil: TdxCollateral) -> None:
    raw = (vectors / "tdx/teekit/tdx-v4-moemahhouk.dat").read_bytes()
    msg = _reject(
        AttestationFailure.TCB_TOO_LOW,
        verify_tdx_quote,
        raw,
        tinfoil,
        TdxPolicy.production(),
        now=T_2026,
    )
    assert "FMSPC 90c06f000000" in msg and "PCESVN 13" in msg


def test_missing_tcb_info_is_reported_precisely(
    vectors: Path, every_collateral: TdxCollateral
) -> None:
    raw = (vectors / "tdx/teekit/tdx-v4-phala.dat").read_bytes()
    msg = _reject(
        AttestationFailure.POLICY,
        verify_tdx_quote,
        raw,
        every_collateral,
        TdxPolicy.production(),
        now=T_2026,
    )
    assert "missing collateral: no TDX TCB Info for FMSPC b0c06f000000" in msg


def test_out_of_date_level_carries_advisories(vectors: Path, tinfoil: TdxCollateral) -> None:
    q = TdxQuote.from_bytes((vectors / "tdx/teekit/tdx-v4-edgeless.dat").read_bytes())
    pol = TdxPolicy.production()
    proven = verify_tdx_signature(q, pol.roots, T_2025)
    every = tinfoil.merged(TdxCollateral.from_dir(vectors / "tdx/teekit"))
    info = select_tcb_info(every, proven.pck.fmspc, proven.pck.pce_id, pol, T_2025)
    tcb = evaluate_tcb(q, proven.pck, info, None)
    assert tcb.status is TcbStatus.OUT_OF_DATE
    assert "INTEL-SA-00837" in tcb.advisory_ids


# --- failure modes on the real v5 quote --------------------------------------------------------


def _v5(vectors: Path) -> bytearray:
    return bytearray((vectors / V5).read_bytes())


def _sig_offset(raw: bytes) -> int:
    body_size: int = struct.unpack_from("<I", raw, 50)[0]
    return 48 + 6 + body_size + 4


@pytest.mark.parametrize(
    ("field", "where", "reason"),
    [
        ("header", lambda raw: 30, AttestationFailure.BAD_SIGNATURE),
        ("body MRTD", lambda raw: 54 + 136 + 5, AttestationFailure.BAD_SIGNATURE),
        ("body REPORTDATA", lambda raw: 54 + 520 + 1, AttestationFailure.BAD_SIGNATURE),
        ("quote signature", lambda raw: _sig_offset(raw) + 3, AttestationFailure.BAD_SIGNATURE),
        ("attestation key", lambda raw: _sig_offset(raw) + 64 + 7, AttestationFailure.UNBOUND_KEY),
        ("QE report", lambda raw: _sig_offset(raw) + 134 + 70, AttestationFailure.BAD_SIGNATURE),
        (
            "QE report signature",
            lambda raw: _sig_offset(raw) + 134 + 384 + 9,
            AttestationFailure.BAD_SIGNATURE,
        ),
    ],
)
def test_bit_flip_in_signed_field(
    vectors: Path, tinfoil: TdxCollateral, field: str, where: object, reason: AttestationFailure
) -> None:
    raw = _v5(vectors)
    assert callable(where)
    raw[where(raw)] ^= 0x01
    _reject(reason, verify_tdx_quote, bytes(raw), tinfoil, TdxPolicy.production(), now=T_2026)


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        (
            "tcb_info_90c06f000000.json",
            b'"tcbEvaluationDataNumber":18',
            b'"tcbEvaluationDataNumber":19',
        ),
        ("qe_identity.json", b'"isvprodid":2', b'"isvprodid":3'),
    ],
)
def test_tampered_collateral_body(
    vectors: Path, tmp_path: Path, file: str, old: bytes, new: bytes
) -> None:
    src = vectors / "tdx/tinfoil-collateral"
    for p in src.iterdir():
        data = p.read_bytes()
        if p.name == file:
            assert old in data
            data = data.replace(old, new)
        (tmp_path / p.name).write_bytes(data)
    msg = _reject(
        AttestationFailure.BAD_SIGNATURE,
        verify_tdx_quote,
        bytes(_v5(vectors)),
        TdxCollateral.from_dir(tmp_path),
        TdxPolicy.production(),
        now=T_2026,
    )
    assert ("TCB Info" if "tcb" in file else "QE Identity") in msg


def test_expired_collateral(vectors: Path, tinfoil: TdxCollateral) -> None:
    msg = _reject(
        AttestationFailure.EXPIRED,
        verify_tdx_quote,
        bytes(_v5(vectors)),
        tinfoil,
        TdxPolicy.production(),
        now=datetime(2026, 3, 1, tzinfo=UTC),
    )
    assert "not at 2026-03-01" in msg


def test_collateral_older_than_policy_max_age(vectors: Path, tinfoil: TdxCollateral) -> None:
    pol = TdxPolicy.production(max_collateral_age=timedelta(days=3))
    msg = _reject(
        AttestationFailure.EXPIRED, verify_tdx_quote, bytes(_v5(vectors)), tinfoil, pol, now=T_2026
    )
    assert "maximum age" in msg


def test_wrong_report_data(vectors: Path, tinfoil: TdxCollateral) -> None:
    pol = TdxPolicy.production(report_data=bytes(64))
    _reject(
        AttestationFailure.STALE_NONCE,
        verify_tdx_quote,
        bytes(_v5(vectors)),
        tinfoil,
        pol,
        now=T_2026,
    )


def test_measurement_not_in_allowlist(vectors: Path, tinfoil: TdxCollateral) -> None:
    pol = TdxPolicy.production(mrtd=frozenset({bytes(48)}))
    msg = _reject(
        AttestationFailure.MEASUREMENT_MISMATCH,
        verify_tdx_quote,
        bytes(_v5(vectors)),
        tinfoil,
        pol,
        now=T_2026,
    )
    assert "MRTD" in msg


def test_missing_crl_fails_closed(vectors: Path, tinfoil: TdxCollateral) -> None:
    no_crls = TdxCollateral(tinfoil.tcb_infos, tinfoil.qe_identities, (), tinfoil.certificates)
    msg = _reject(
        AttestationFailure.POLICY,
        verify_tdx_quote,
        bytes(_v5(vectors)),
        no_crls,
        TdxPolicy.production(),
        now=T_2026,
    )
    assert "missing collateral" in msg and "CRL" in msg


def test_production_root_rejects_intel_test_root_sample(vectors: Path) -> None:
    d = vectors / "tdx/intel-qvl-sampledata"
    msg = _reject(
        AttestationFailure.UNTRUSTED_ROOT,
        verify_tdx_quote,
        (d / "quote.dat").read_bytes(),
        TdxCollateral.from_dir(d),
        TdxPolicy.production(),
        now=datetime(2025, 1, 1, tzinfo=UTC),
    )
    assert "not a pinned root" in msg


def test_test_root_pinned_accepts_sample_and_warns(vectors: Path) -> None:
    d = vectors / "tdx/intel-qvl-sampledata"
    now = datetime(2025, 1, 1, tzinfo=UTC)
    pol = TdxPolicy.with_test_root((d / "trustedRootCaCert.pem").read_bytes())
    assert pol.insecure
    coll = TdxCollateral.from_dir(d)
    q = TdxQuote.from_bytes((d / "quote.dat").read_bytes())
    with pytest.warns(InsecureModeWarning):
        proven = verify_tdx_signature(q, pol.roots, now, coll)  # chain, CRLs, QE, quote sig
    with pytest.warns(InsecureModeWarning):
        info = select_tcb_info(coll, proven.pck.fmspc, proven.pck.pce_id, pol, now)
        assert evaluate_tcb(q, proven.pck, info, None).status is TcbStatus.UP_TO_DATE
        # Intel's synthetic sample QE identity names another MRSIGNER than its quote's QE:
        # the full verifier must say so rather than pass.
        msg = _reject(
            AttestationFailure.MEASUREMENT_MISMATCH, verify_tdx_quote, q, coll, pol, now=now
        )
    assert "QE MRSIGNER" in msg


def test_production_quote_under_test_root_only(vectors: Path, tinfoil: TdxCollateral) -> None:
    d = vectors / "tdx/intel-qvl-sampledata"
    pol = TdxPolicy.with_test_root((d / "trustedRootCaCert.pem").read_bytes())
    with pytest.warns(InsecureModeWarning):
        _reject(
            AttestationFailure.UNTRUSTED_ROOT,
            verify_tdx_quote,
            bytes(_v5(vectors)),
            tinfoil,
            pol,
            now=T_2026,
        )


# --- forged hierarchy under our own test CA: revocation and the DEBUG attribute ----------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
    serial: int,
    extra: x509.ExtensionType | None = None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if extra is not None:
        b = b.add_extension(extra, critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _raw_sig(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _crl(
    issuer: str, key: ec.EllipticCurvePrivateKey, revoked: list[int]
) -> x509.CertificateRevocationList:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_name(issuer))
        .last_update(datetime(2026, 1, 1, tzinfo=UTC))
        .next_update(datetime(2026, 3, 1, tzinfo=UTC))
    )
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(datetime(2026, 1, 2, tzinfo=UTC))
            .build()
        )
    return b.sign(key, hashes.SHA256())


def _resign_json(raw: bytes, key_name: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    text = raw.decode()
    inner = json.dumps(json.loads(text)[key_name], separators=(",", ":")).encode()
    return b'{"%s":%s,"signature":"%s"}' % (
        key_name.encode(),
        inner,
        _raw_sig(key, inner).hex().encode(),
    )


def _forge(
    vectors: Path,
    *,
    debug: bool,
    revoke_leaf: bool,
    revoke_tcb_signer: bool = False,
    top_status: str = "UpToDate",
) -> tuple[bytes, TdxCollateral, TdxPolicy]:
    """Re-sign the real v5 quote and its collateral under a throwaway test hierarchy."""
    real = TdxQuote.from_bytes((vectors / V5).read_bytes())
    real_leaf = next(
        c for c in real.signature.pck_chain if "PCK Certificate" in c.subject.rfc4514_string()
    )
    sgx_ext = real_leaf.extensions.get_extension_for_oid(
        x509.ObjectIdentifier("1.2.840.113741.1.13.1")
    )
    curve = ec.SECP256R1()
    root_k, ca_k, pck_k, tcb_k, att_k = (ec.generate_private_key(curve) for _ in range(5))
    root = _cert("Test Root", root_k, "Test Root", root_k, True, 1)
    ca = _cert("Test PCK CA", ca_k, "Test Root", root_k, True, 2)
    pck = _cert("Test PCK", pck_k, "Test PCK CA", ca_k, False, 3, sgx_ext.value)
    tcb_signer = _cert("Test TCB Signing", tcb_k, "Test Root", root_k, False, 4)
    body = bytearray(real.signed_bytes)
    if debug:
        body[54 + 120] |= 0x01  # TDATTRIBUTES byte 0 (header 48 + descriptor 6 + offset 120)
    nums = att_k.public_key().public_numbers()
    att_pub = nums.x.to_bytes(32, "big") + nums.y.to_bytes(32, "big")
    auth = real.signature.qe_auth_data
    qe = bytearray(real.signature.qe_report.raw)
    qe[320:384] = hashlib.sha256(att_pub + auth).digest() + bytes(32)
    from cryptography.hazmat.primitives.serialization import Encoding

    chain = b"".join(c.public_bytes(Encoding.PEM) for c in (pck, ca, root))
    inner = bytes(qe) + _raw_sig(pck_k, bytes(qe)) + struct.pack("<H", len(auth)) + auth
    inner += struct.pack("<HI", 5, len(chain)) + chain
    sig_data = _raw_sig(att_k, bytes(body)) + att_pub + struct.pack("<HI", 6, len(inner)) + inner
    quote = bytes(body) + struct.pack("<I", len(sig_data)) + sig_data
    tin = vectors / "tdx/tinfoil-collateral"
    tcb_json = (tin / "tcb_info_90c06f000000.json").read_bytes()
    # The platform matches the first platform TCB level (the last "tcbLevels" array; the
    # earlier ones belong to TDX module identities): give it the status under test, then sign.
    cut = tcb_json.rindex(b'"tcbLevels":[')
    tcb_json = tcb_json[:cut] + tcb_json[cut:].replace(
        b'"tcbStatus":"UpToDate"', b'"tcbStatus":"%s"' % top_status.encode(), 1
    )
    pem = b"".join(c.public_bytes(Encoding.PEM) for c in (tcb_signer, root))
    coll = TdxCollateral.from_files(
        [
            (
                "tcb",
                _resign_json(tcb_json, "tcbInfo", tcb_k),
            ),
            ("qe", _resign_json((tin / "qe_identity.json").read_bytes(), "enclaveIdentity", tcb_k)),
            ("chain", pem),
            (
                "root.crl",
                _crl("Test Root", root_k, [4] if revoke_tcb_signer else []).public_bytes(
                    Encoding.DER
                ),
            ),
            (
                "ca.crl",
                _crl("Test PCK CA", ca_k, [3] if revoke_leaf else [99]).public_bytes(Encoding.DER),
            ),
        ]
    )
    return quote, coll, TdxPolicy(roots=(root,))


def test_forged_hierarchy_verifies_and_warns(vectors: Path) -> None:
    quote, coll, pol = _forge(vectors, debug=False, revoke_leaf=False)
    with pytest.warns(InsecureModeWarning):
        verified = verify_tdx_quote(quote, coll, pol, now=T_2026)
    assert verified.tcb_status is TcbStatus.UP_TO_DATE
    assert verified.insecure_root  # a test root: AttestedEnclave.insecure_root says so for TDX too


def test_revoked_pck(vectors: Path) -> None:
    quote, coll, pol = _forge(vectors, debug=False, revoke_leaf=True)
    with pytest.warns(InsecureModeWarning):
        msg = _reject(AttestationFailure.REVOKED, verify_tdx_quote, quote, coll, pol, now=T_2026)
    assert "serial 0x3" in msg


def test_revoked_tcb_signing_certificate(vectors: Path) -> None:
    quote, coll, pol = _forge(vectors, debug=False, revoke_leaf=False, revoke_tcb_signer=True)
    with pytest.warns(InsecureModeWarning):
        msg = _reject(AttestationFailure.REVOKED, verify_tdx_quote, quote, coll, pol, now=T_2026)
    assert "Test TCB Signing" in msg


def test_out_of_date_rejected_by_default_accepted_when_opted_in(vectors: Path) -> None:
    quote, coll, pol = _forge(vectors, debug=False, revoke_leaf=False, top_status="OutOfDate")
    with pytest.warns(InsecureModeWarning):
        msg = _reject(
            AttestationFailure.TCB_TOO_LOW, verify_tdx_quote, quote, coll, pol, now=T_2026
        )
    assert "TCB status is OutOfDate" in msg
    opted = TdxPolicy(
        roots=pol.roots,
        accepted_tcb_statuses=frozenset({TcbStatus.UP_TO_DATE, TcbStatus.OUT_OF_DATE}),
    )
    with pytest.warns(InsecureModeWarning):
        v = verify_tdx_quote(quote, coll, opted, now=T_2026)
    assert v.tcb_status is TcbStatus.OUT_OF_DATE
    assert v.platform_tcb_status is TcbStatus.OUT_OF_DATE


def test_revoked_tcb_level(vectors: Path) -> None:
    quote, coll, pol = _forge(vectors, debug=False, revoke_leaf=False, top_status="Revoked")
    opted = TdxPolicy(roots=pol.roots, accepted_tcb_statuses=frozenset({TcbStatus.UP_TO_DATE}))
    with pytest.warns(InsecureModeWarning):
        _reject(AttestationFailure.REVOKED, verify_tdx_quote, quote, coll, opted, now=T_2026)


def test_debug_td_rejected_unless_allowed(vectors: Path) -> None:
    quote, coll, pol = _forge(vectors, debug=True, revoke_leaf=False)
    with pytest.warns(InsecureModeWarning):
        _reject(AttestationFailure.DEBUG_ENCLAVE, verify_tdx_quote, quote, coll, pol, now=T_2026)
    allow = TdxPolicy(roots=pol.roots, allow_debug=True)
    with pytest.warns(InsecureModeWarning):
        assert verify_tdx_quote(quote, coll, allow, now=T_2026).debug


def test_policy_rejects_empty_allowlist() -> None:
    from veil.sdk.errors import ConfigError

    with pytest.raises(ConfigError, match="empty allowlist"):
        TdxPolicy.production(mrtd=frozenset())
