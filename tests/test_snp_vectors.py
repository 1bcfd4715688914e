"""The SEV-SNP verifier against real AMD evidence in tests/vectors/sev-snp (see its README)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from veil.sdk import (
    AttestationError,
    AttestationFailure,
    AttestationPolicy,
    Product,
    SnpCertChain,
    SnpReport,
    verify_snp_report,
)
from veil.sdk.attestation import amd_roots

NOW = datetime(2026, 1, 15, tzinfo=UTC)

# (report, certificate files, product, VMPL) — every positive report in the README.
POSITIVE = [
    (
        "virtee-sev/report_milan.bin",
        ["virtee-sev/vcek_milan.der", "virtee-sev/cert_chain_milan.pem"],
        Product.MILAN,
        0,
    ),
    (
        "teekit-gcp/sev-gcp.bin",
        ["teekit-gcp/sev-gcp-vcek.pem", "teekit-gcp/sev-gcp-cert-chain.pem"],
        Product.MILAN,
        0,
    ),
    (
        "teekit-gcp/sev-gcp-reportdata.bin",
        ["teekit-gcp/sev-gcp-vcek.pem", "teekit-gcp/sev-gcp-cert-chain.pem"],
        Product.MILAN,
        1,
    ),
    (
        "teekit-gcp/sev-gcp-x25519-bound.bin",
        ["teekit-gcp/sev-gcp-x25519-vcek.pem", "teekit-gcp/sev-gcp-cert-chain.pem"],
        Product.MILAN,
        1,
    ),
    ("routex-lua/report-genoa-v5.bin", ["routex-lua/vcek-chain-genoa-v5.pem"], Product.GENOA, 0),
    ("routex-lua/report-genoa-v3.bin", ["routex-lua/vcek-chain-genoa.pem"], Product.GENOA, 0),
    ("routex-lua/report-milan-v3.bin", ["routex-lua/vcek-chain-milan.pem"], Product.MILAN, 0),
    ("routex-lua/report-turin.bin", ["routex-lua/vcek-chain-turin.pem"], Product.TURIN, 0),
]
DEBUG = (
    "go-sev-guest/attestation.bin",
    ["go-sev-guest/vcek_milan.der", "go-sev-guest/ask_ark_milan.pem"],
)


def _load(vectors: Path, report: str, certs: list[str]) -> tuple[bytes, SnpCertChain]:
    base = vectors / "sev-snp"
    chain = SnpCertChain.from_pem(*[(base / c).read_bytes() for c in certs])
    return (base / report).read_bytes(), chain


def _policy(**changes: object) -> AttestationPolicy:
    policy = AttestationPolicy.production(allow_any_measurement=True)
    return replace(policy, require_key_binding=False, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("report", "certs", "product", "vmpl"), POSITIVE, ids=[p[0] for p in POSITIVE]
)
def test_every_positive_report_verifies_under_amd_roots(
    vectors: Path, report: str, certs: list[str], product: Product, vmpl: int
) -> None:
    raw, chain = _load(vectors, report, certs)
    verified = verify_snp_report(raw, chain, _policy(), now=NOW)
    assert verified.product is product
    assert verified.vmpl == vmpl
    assert verified.measurement == raw[0x90:0xC0]
    assert not verified.insecure_root
    assert verified.root_fingerprint in {r.fingerprint for r in amd_roots()}


def test_debug_report_is_rejected_by_production_policy(vectors: Path) -> None:
    raw, chain = _load(vectors, *DEBUG)
    with pytest.raises(AttestationError) as err:
        verify_snp_report(raw, chain, _policy(), now=NOW)
    assert err.value.reason is AttestationFailure.DEBUG_ENCLAVE


def test_debug_report_signature_and_chain_are_genuine(vectors: Path) -> None:
    raw, chain = _load(vectors, *DEBUG)
    verified = verify_snp_report(raw, chain, _policy(allow_debug=True), now=NOW)
    assert verified.policy >> 19 & 1 == 1


def test_x25519_bound_report_binds_nonce_and_key(vectors: Path) -> None:
    raw, chain = _load(vectors, *POSITIVE[3][:2])
    fields = dict(
        line.split("=", 1)
        for line in (vectors / "sev-snp/teekit-gcp/sev-gcp-x25519-bound.txt").read_text().split()
    )
    nonce, key = bytes.fromhex(fields["NONCE"]), bytes.fromhex(fields["X25519_KEY"])
    bound = hashlib.sha512(nonce + key).digest()
    policy = replace(_policy(), require_key_binding=True)
    assert (
        verify_snp_report(raw, chain, policy, now=NOW, expected_report_data=bound).report_data
        == bound
    )
    other_key = bytes(31) + b"\x01"
    with pytest.raises(AttestationError) as err:
        verify_snp_report(
            raw,
            chain,
            policy,
            now=NOW,
            expected_report_data=hashlib.sha512(nonce + other_key).digest(),
        )
    assert err.value.reason is AttestationFailure.UNBOUND_KEY


def test_binding_required_but_not_given_fails_closed(vectors: Path) -> None:
    raw, chain = _load(vectors, *POSITIVE[0][:2])
    with pytest.raises(AttestationError) as err:
        verify_snp_report(raw, chain, replace(_policy(), require_key_binding=True), now=NOW)
    assert err.value.reason is AttestationFailure.UNBOUND_KEY


def test_parse_only_report(vectors: Path) -> None:
    report = SnpReport.from_bytes(
        (vectors / "sev-snp/routex-lua/parse-only-report-genoa-v2.bin").read_bytes()
    )
    assert report.version == 2
    assert report.signature_algo == 1
    assert not report.debug_allowed


def test_report_checked_against_another_products_chain_fails(vectors: Path) -> None:
    raw, _ = _load(vectors, *POSITIVE[4][:2])  # Genoa report
    _, milan_chain = _load(vectors, *POSITIVE[6][:2])
    with pytest.raises(AttestationError) as err:
        verify_snp_report(raw, milan_chain, _policy(), now=NOW)
    assert err.value.reason is AttestationFailure.BAD_SIGNATURE


def test_report_with_another_chips_vcek_fails(vectors: Path) -> None:
    # Same product and root, another chip's VCEK (a TCB mismatch is tested with the simulated TEE).
    raw, _ = _load(vectors, *POSITIVE[1][:2])
    _, other = _load(vectors, *POSITIVE[6][:2])
    with pytest.raises(AttestationError) as err:
        verify_snp_report(raw, other, _policy(), now=NOW)
    assert err.value.reason in {AttestationFailure.BAD_SIGNATURE, AttestationFailure.CERT_MISMATCH}


def test_chain_root_is_never_trusted_on_its_own(vectors: Path) -> None:
    raw, chain = _load(vectors, *POSITIVE[0][:2])
    genoa_only = replace(
        _policy(), roots=tuple(r for r in amd_roots() if r.product is Product.GENOA)
    )
    with pytest.raises(AttestationError) as err:
        verify_snp_report(raw, chain, genoa_only, now=NOW)
    assert err.value.reason is AttestationFailure.UNTRUSTED_ROOT


def test_expired_vcek_is_rejected(vectors: Path) -> None:
    raw, chain = _load(vectors, *POSITIVE[0][:2])
    later = chain.vcek.not_valid_after_utc.replace(year=chain.vcek.not_valid_after_utc.year + 1)
    with pytest.raises(AttestationError) as err:
        verify_snp_report(raw, chain, _policy(), now=later)
    assert err.value.reason is AttestationFailure.CERT_EXPIRED


@pytest.mark.parametrize(
    "offset", [0x00, 0x08, 0x30, 0x50, 0x90, 0xC0, 0x180, 0x1A0, 0x29F, 0x2A0, 0x2E8]
)
def test_bit_flip_in_real_report_is_rejected(vectors: Path, offset: int) -> None:
    raw, chain = _load(vectors, *POSITIVE[5][:2])
    tampered = bytearray(raw)
    tampered[offset] ^= 0x01
    with pytest.raises(AttestationError) as err:
        verify_snp_report(bytes(tampered), chain, _policy(), now=NOW)
    assert err.value.reason in {
        AttestationFailure.BAD_SIGNATURE,
        AttestationFailure.MALFORMED,
        AttestationFailure.UNSUPPORTED,
    }


@pytest.mark.parametrize("size", [0, 1183, 1185, 4096])
def test_wrong_size_report_is_malformed(size: int) -> None:
    with pytest.raises(AttestationError, match=f"report is {size} bytes, expected 1184") as err:
        SnpReport.from_bytes(bytes(size))
    assert err.value.reason is AttestationFailure.MALFORMED
