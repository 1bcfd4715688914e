"""Composite CPU+GPU binding: the GPU nonce must be derived from the verified CPU REPORT_DATA."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from veil.sdk.attestation._composite import gpu_nonce_for, verify_composite
from veil.sdk.attestation.nvidia import (
    ReferenceMeasurement,
    SpdmEvidence,
    VerifiedRim,
    verify_rim,
)
from veil.sdk.attestation.tdx import TdxCollateral, TdxPolicy, verify_tdx_quote
from veil.sdk.errors import AttestationError, AttestationFailure, InsecureModeWarning

NOW = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class _Cpu:
    report_data: bytes


def _hopper(vectors: Path) -> tuple[bytes, bytes]:
    d = vectors / "nvidia-gpu/nvtrust"
    return (
        bytes.fromhex((d / "hopperAttestationReport.txt").read_text().strip()),
        (d / "hopperCertChain.txt").read_bytes(),
    )


def _self_rim(vectors: Path, raw: bytes) -> VerifiedRim:
    """The real, verified RIM with golden values replaced by the evidence's own."""
    rim = verify_rim(
        (vectors / "nvidia-gpu/nvtrust/1010_0200_882_96005E0001_PROD.swidtag").read_bytes(),
        now=NOW,
    )
    measured = SpdmEvidence.from_bytes(raw).measurements()
    golden = tuple(
        ReferenceMeasurement(m.index, m.name, (measured[m.index + 1],)) for m in rim.measurements
    )
    return replace(rim, measurements=golden)


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    return (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA384())
    )


def _forged_gpu(
    vectors: Path, nonce: bytes
) -> tuple[bytes, list[x509.Certificate], x509.Certificate]:
    """The real sample response, asked with ``nonce`` and re-signed by a throwaway device key."""
    raw, _ = _hopper(vectors)
    root_k, dev_k = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    root = _cert("Test GPU Root", root_k, "Test GPU Root", root_k, True)
    dev = _cert("Test GPU", dev_k, "Test GPU Root", root_k, False)
    body = raw[:4] + nonce + raw[36:-96]
    r, s = decode_dss_signature(dev_k.sign(body, ec.ECDSA(hashes.SHA384())))
    return body + r.to_bytes(48, "big") + s.to_bytes(48, "big"), [dev, root], root


def test_gpu_nonce_definition() -> None:
    rd = bytes(range(64))
    assert gpu_nonce_for(rd) == hashlib.sha256(b"veil-gpu-nonce-v1" + rd).digest()
    assert len(gpu_nonce_for(rd)) == 32 and gpu_nonce_for(rd) != gpu_nonce_for(bytes(64))


def test_bound_gpu_is_accepted_in_one_verdict(vectors: Path) -> None:
    cpu = _Cpu(b"\x07" * 64)
    evidence, chain, root = _forged_gpu(vectors, gpu_nonce_for(cpu.report_data))
    with pytest.warns(InsecureModeWarning):
        v = verify_composite(
            cpu, [(evidence, chain)], rims=[_self_rim(vectors, evidence)], now=NOW, device_root=root
        )
    assert v.cpu is cpu and v.gpu_nonce == gpu_nonce_for(cpu.report_data)
    assert len(v.gpus) == 1 and v.gpus[0].nonce == v.gpu_nonce


def test_gpu_bound_to_another_cpu_is_rejected(vectors: Path) -> None:
    evidence, chain, root = _forged_gpu(vectors, gpu_nonce_for(b"\x07" * 64))
    with pytest.warns(InsecureModeWarning), pytest.raises(AttestationError) as err:
        verify_composite(
            _Cpu(b"\x08" * 64),
            [(evidence, chain)],
            rims=[_self_rim(vectors, evidence)],
            now=NOW,
            device_root=root,
        )
    assert err.value.reason is AttestationFailure.STALE_NONCE


def test_one_bad_gpu_fails_the_whole_verdict(vectors: Path) -> None:
    cpu = _Cpu(b"\x07" * 64)
    good, chain, root = _forged_gpu(vectors, gpu_nonce_for(cpu.report_data))
    bad = bytearray(good)
    bad[-1] ^= 1
    with pytest.warns(InsecureModeWarning), pytest.raises(AttestationError) as err:
        verify_composite(
            cpu,
            [(good, chain), (bytes(bad), chain)],
            rims=[_self_rim(vectors, good)],
            now=NOW,
            device_root=root,
        )
    assert err.value.reason is AttestationFailure.BAD_SIGNATURE


def test_real_tdx_cpu_result_fits_the_protocol(vectors: Path) -> None:
    tdx = verify_tdx_quote(
        (vectors / "tdx/go-tdx-guest/quote_v5_sample.dat").read_bytes(),
        TdxCollateral.from_dir(vectors / "tdx/tinfoil-collateral"),
        TdxPolicy.production(),
        now=datetime(2026, 2, 5, tzinfo=UTC),
    )
    raw, chain = _hopper(vectors)
    # The real sample GPU was not asked with this TDX quote's nonce: the composite refuses it.
    with pytest.raises(AttestationError) as err:
        verify_composite(tdx, [(raw, chain)], rims=[_self_rim(vectors, raw)], now=NOW)
    assert err.value.reason is AttestationFailure.STALE_NONCE
    evidence, fchain, root = _forged_gpu(vectors, gpu_nonce_for(tdx.report_data))
    with pytest.warns(InsecureModeWarning):
        v = verify_composite(
            tdx,
            [(evidence, fchain)],
            rims=[_self_rim(vectors, evidence)],
            now=NOW,
            device_root=root,
        )
    assert v.cpu.report_data == tdx.report_data


def test_cpu_without_report_data(vectors: Path) -> None:
    raw, chain = _hopper(vectors)
    with pytest.raises(AttestationError) as err:
        verify_composite(_Cpu(b""), [(raw, chain)], rims=[_self_rim(vectors, raw)], now=NOW)
    assert err.value.reason is AttestationFailure.UNBOUND_KEY


def test_no_gpu(vectors: Path) -> None:
    raw, _ = _hopper(vectors)
    with pytest.raises(AttestationError) as err:
        verify_composite(_Cpu(b"\x01" * 64), [], rims=[_self_rim(vectors, raw)], now=NOW)
    assert err.value.reason is AttestationFailure.POLICY
