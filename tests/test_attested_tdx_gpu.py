"""The client's one verdict over TDX enclaves and confidential GPUs (composite attestation).

Real Intel and NVIDIA evidence cannot commit to a nonce and claims made here, so these tests
show that the client runs the full verifiers and then refuses exactly at the binding step, and
that the policy decides whether GPUs are accepted or required.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from veil.enclave._keys import KeyEpoch
from veil.sdk import (
    AttestationError,
    AttestationFailure,
    AttestationPolicy,
    Evidence,
    verify_enclave,
)
from veil.sdk.attestation import GpuRequirement
from veil.sdk.attestation.nvidia import MappingRimStore, SpdmEvidence
from veil.sdk.attestation.tdx import TdxPolicy
from veil.sdk.evidence import _verify_gpus

T_TDX = datetime(2026, 2, 5, tzinfo=UTC)  # inside the tinfoil collateral's validity
T_GPU = datetime(2025, 1, 1, tzinfo=UTC)  # inside the sample RIMs' validity
NONCE = bytes(range(32))


def _claims(now: datetime) -> bytes:
    return KeyEpoch.generate(now=now, lifetime=timedelta(days=3650), measurement=bytes(48)).claims


def _tdx_evidence(vectors: Path, *, collateral: bool = True) -> Evidence:
    folder = vectors / "tdx/tinfoil-collateral"
    files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if collateral else {}
    return Evidence(
        tee="tdx",
        report=(vectors / "tdx/go-tdx-guest/quote_v5_sample.dat").read_bytes(),
        cert_chain=(),
        claims=_claims(T_TDX - timedelta(days=1)),
        collateral=files,
    )


def _tdx_policy() -> AttestationPolicy:
    base = AttestationPolicy.production(allow_any_measurement=True)
    return replace(base, tdx=TdxPolicy.production())


def test_tdx_quote_is_verified_in_full_then_refused_at_the_binding(vectors: Path) -> None:
    with pytest.raises(AttestationError) as err:
        verify_enclave(_tdx_evidence(vectors), nonce=NONCE, policy=_tdx_policy(), now=T_TDX)
    assert err.value.reason is AttestationFailure.STALE_NONCE
    assert "REPORTDATA is not the expected value" in str(err.value)


def test_tdx_needs_a_tdx_policy_and_collateral(vectors: Path) -> None:
    snp_only = AttestationPolicy.production(allow_any_measurement=True)
    with pytest.raises(AttestationError, match="does not accept Intel TDX") as err:
        verify_enclave(_tdx_evidence(vectors), nonce=NONCE, policy=snp_only, now=T_TDX)
    assert err.value.reason is AttestationFailure.POLICY
    with pytest.raises(AttestationError, match="missing collateral"):
        verify_enclave(
            _tdx_evidence(vectors, collateral=False), nonce=NONCE, policy=_tdx_policy(), now=T_TDX
        )


def test_tdx_evidence_round_trips_through_the_wire_form(vectors: Path) -> None:
    evidence = _tdx_evidence(vectors)
    again = Evidence.from_proto(evidence.to_proto())
    assert again == evidence


@dataclass(frozen=True)
class _Cpu:
    """A verified CPU result (the composite verifier needs only its REPORT_DATA)."""

    report_data: bytes


def _hopper(vectors: Path) -> tuple[bytes, bytes]:
    folder = vectors / "nvidia-gpu/nvtrust"
    return (
        bytes.fromhex((folder / "hopperAttestationReport.txt").read_text().strip()),
        (folder / "hopperCertChain.txt").read_bytes(),
    )


def _rims(vectors: Path, spdm: bytes) -> MappingRimStore:
    folder = vectors / "nvidia-gpu/nvtrust"
    ids = SpdmEvidence.from_bytes(spdm).rim_ids
    docs = [
        (folder / "Driver_RIM_test_no_gpu.swidtag").read_bytes(),
        (folder / "1010_0200_882_96005E0001_PROD.swidtag").read_bytes(),
    ]
    return MappingRimStore(dict(zip(ids, docs, strict=False)))


def test_gpu_is_refused_unless_bound_to_the_cpu_report(vectors: Path) -> None:
    spdm, chain = _hopper(vectors)
    evidence = replace(_tdx_evidence(vectors, collateral=False), gpus=((spdm, chain),))
    policy = replace(_tdx_policy(), gpu=GpuRequirement(rim_store=_rims(vectors, spdm)))
    cpu = _Cpu(report_data=hashlib.sha512(b"a CPU report bound to other claims").digest())
    with pytest.raises(AttestationError) as err:
        _verify_gpus(evidence, policy, cpu, T_GPU)  # type: ignore[arg-type]
    assert err.value.reason is AttestationFailure.STALE_NONCE


def test_gpu_policy_accepts_requires_or_refuses(vectors: Path) -> None:
    spdm, chain = _hopper(vectors)
    cpu = _Cpu(report_data=bytes(64))
    no_gpu = _tdx_evidence(vectors, collateral=False)
    with_gpu = replace(no_gpu, gpus=((spdm, chain),))
    plain = _tdx_policy()
    assert _verify_gpus(no_gpu, plain, cpu, T_GPU) is None  # type: ignore[arg-type]
    with pytest.raises(AttestationError, match="policy has no GPU reference values"):
        _verify_gpus(with_gpu, plain, cpu, T_GPU)  # type: ignore[arg-type]
    required = replace(plain, gpu=GpuRequirement(rim_store=_rims(vectors, spdm)))
    with pytest.raises(AttestationError, match="requires a confidential GPU; none presented"):
        _verify_gpus(no_gpu, required, cpu, T_GPU)  # type: ignore[arg-type]
    optional = replace(plain, gpu=GpuRequirement(rim_store=_rims(vectors, spdm), required=False))
    assert _verify_gpus(no_gpu, optional, cpu, T_GPU) is None  # type: ignore[arg-type]
