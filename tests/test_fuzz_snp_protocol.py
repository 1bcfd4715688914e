"""Random and mutated bytes into every SEV-SNP and wire-protocol parser: only VeilErrors escape."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.sdk import AttestationPolicy, EnclaveClaims, SnpCertChain, SnpReport, VeilError
from veil.sdk.attestation._roots import TrustRoot
from veil.sdk.attestation._snp_verify import verify_snp_report
from veil.sdk.attestation.der import decode_ia5, decode_integer, decode_octets
from veil.sdk.tensors import from_proto
from veil.v1 import common_pb2

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
REPORT = Path(__file__).resolve().parent / "vectors/sev-snp/routex-lua/report-genoa-v5.bin"
CHAIN = REPORT.with_name("vcek-chain-genoa-v5.pem")


def _only_veil_errors(call, *args):  # type: ignore[no-untyped-def]
    with contextlib.suppress(VeilError):  # anything else escaping fails the test
        call(*args)


@FUZZ
@given(st.binary(max_size=2048))
def test_report_parser(data: bytes) -> None:
    _only_veil_errors(SnpReport.from_bytes, data)


@FUZZ
@given(st.binary(min_size=1184, max_size=1184))
def test_report_verifier_on_random_reports(data: bytes) -> None:
    chain = SnpCertChain.from_pem(CHAIN.read_bytes())
    policy = AttestationPolicy.production(allow_any_measurement=True)
    _only_veil_errors(
        lambda: verify_snp_report(data, chain, policy, now=datetime(2026, 1, 15, tzinfo=UTC))
    )


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 1183), st.integers(1, 255)), min_size=1, max_size=8))
def test_report_verifier_on_mutated_real_report(flips: list[tuple[int, int]]) -> None:
    raw = bytearray(REPORT.read_bytes())
    for offset, mask in flips:
        raw[offset] ^= mask
    chain = SnpCertChain.from_pem(CHAIN.read_bytes())
    policy = AttestationPolicy.production(allow_any_measurement=True)
    try:
        verify_snp_report(bytes(raw), chain, policy, now=datetime(2026, 1, 15, tzinfo=UTC))
    except VeilError:
        return
    # The only way through is a flip outside the signed bytes (the reserved tail after s).
    assert all(offset >= 0x2E8 + 72 for offset, _ in flips)


@FUZZ
@given(st.binary(max_size=4096))
def test_certificate_and_root_parsers(data: bytes) -> None:
    _only_veil_errors(SnpCertChain.from_pem, data)
    _only_veil_errors(TrustRoot.from_pem, data)
    _only_veil_errors(
        SnpCertChain.from_pem,
        b"-----BEGIN CERTIFICATE-----\n" + data + b"\n-----END CERTIFICATE-----\n",
    )


@FUZZ
@given(st.binary(max_size=512))
def test_der_extension_decoders(data: bytes) -> None:
    _only_veil_errors(decode_integer, data, "x")
    _only_veil_errors(decode_ia5, data, "x")
    _only_veil_errors(decode_octets, data, "x", 64)


@FUZZ
@given(st.binary(max_size=2048))
def test_claims_parser(data: bytes) -> None:
    _only_veil_errors(EnclaveClaims.from_bytes, data)


@FUZZ
@given(
    st.text(max_size=12), st.lists(st.integers(-3, 1 << 20), max_size=4), st.binary(max_size=256)
)
def test_tensor_decoder(dtype: str, shape: list[int], data: bytes) -> None:
    tensor = common_pb2.Tensor(dtype=dtype, shape=shape, data=data)
    _only_veil_errors(lambda: from_proto(tensor, max_bytes=1 << 16))
