"""NVIDIA GPU / NVSwitch evidence: real nvtrust samples, RIMs, and one test per failure mode."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from veil.sdk.attestation.nvidia import (
    DirectoryRimStore,
    SpdmEvidence,
    VerifiedRim,
    nvidia_device_root,
    verify_gpu_evidence,
    verify_rim,
    verify_spdm_signature,
)
from veil.sdk.errors import AttestationError, AttestationFailure, ConfigError, InsecureModeWarning

NOW = datetime(2025, 1, 1, tzinfo=UTC)  # RIM signing certificates expire 2025-06-22
RIMS = [
    "1010_0200_882_96005E0001_PROD.swidtag",
    "1010_0200_882_96005E0001_test_no_gpu.swidtag",
    "Driver_RIM_test_no_gpu.swidtag",
]


def _nv(vectors: Path) -> Path:
    return vectors / "nvidia-gpu/nvtrust"


def _hopper(vectors: Path) -> tuple[bytes, bytes]:
    d = _nv(vectors)
    raw = bytes.fromhex((d / "hopperAttestationReport.txt").read_text().strip())
    return raw, (d / "hopperCertChain.txt").read_bytes()


def _entries(vectors: Path, name: str) -> list[tuple[bytes, bytes, bytes]]:
    out = []
    for e in json.loads((_nv(vectors) / name).read_text()):
        out.append(
            (
                base64.b64decode(e["evidence"]),
                base64.b64decode(e["certificate"]),
                bytes.fromhex(e["nonce"]),
            )
        )
    return out


def _rims(vectors: Path, names: list[str]) -> list[VerifiedRim]:
    return [verify_rim((_nv(vectors) / n).read_bytes(), now=NOW) for n in names]


def _reject(reason: AttestationFailure, fn: object, *args: object, **kw: object) -> str:
    assert callable(fn)
    with pytest.raises(AttestationError) as err:
        fn(*args, **kw)
    assert err.value.reason is reason, str(err.value)
    return str(err.value)


def test_opaque_data_versions(vectors: Path) -> None:
    raw, _ = _hopper(vectors)
    ev = SpdmEvidence.from_bytes(raw)
    assert (ev.driver_version, ev.vbios_version) == ("550.90.07", "96.00.9F.00.01")
    switch = SpdmEvidence.from_bytes(_entries(vectors, "ppcie_switch_evidence.json")[0][0])
    assert switch.vbios_version == "96.10.73.00.01" and switch.driver_version is None


def test_pinned_roots_are_the_shipped_copies(vectors: Path) -> None:
    from cryptography import x509

    ref = x509.load_pem_x509_certificate((_nv(vectors) / "verifier_device_root.pem").read_bytes())
    assert nvidia_device_root() == ref
    switch = x509.load_pem_x509_certificate(
        (_nv(vectors) / "nvswitch_verifier_device_root.pem").read_bytes()
    )
    assert switch.public_key() == ref.public_key()


def test_hopper_sample_signature_and_chain(vectors: Path) -> None:
    raw, chain = _hopper(vectors)
    proven = verify_spdm_signature(raw, chain, now=NOW)
    assert len(proven.chain) == 5 and proven.chain[-1] == nvidia_device_root()
    assert len(proven.evidence.blocks) == 64


@pytest.mark.parametrize("name", ["ppcie_gpu_evidence.json", "ppcie_switch_evidence.json"])
def test_every_ppcie_entry_verifies(vectors: Path, name: str) -> None:
    entries = _entries(vectors, name)
    assert len(entries) in (4, 8)
    for evidence, chain, nonce in entries:
        proven = verify_spdm_signature(evidence, chain, now=NOW)
        assert proven.evidence.nonce == nonce


@pytest.mark.parametrize("name", RIMS)
def test_rims_verify_before_june_2025(vectors: Path, name: str) -> None:
    rim = _rims(vectors, [name])[0]
    assert rim.product == "GH100" and rim.measurements


def test_rim_expired_signing_certificate(vectors: Path) -> None:
    data = (_nv(vectors) / RIMS[0]).read_bytes()
    _reject(
        AttestationFailure.CERT_EXPIRED,
        verify_rim,
        data,
        now=datetime(2025, 7, 1, tzinfo=UTC),
    )


def test_rim_tampered_golden_value(vectors: Path) -> None:
    data = (_nv(vectors) / RIMS[0]).read_bytes()
    tampered = data.replace(b"c3f65ef79a19c029", b"c3f65ef79a19c028")
    assert tampered != data
    _reject(AttestationFailure.BAD_SIGNATURE, verify_rim, tampered, now=NOW)


def test_rim_wrong_root(vectors: Path) -> None:
    data = (_nv(vectors) / RIMS[0]).read_bytes()
    with pytest.warns(InsecureModeWarning):
        _reject(
            AttestationFailure.UNTRUSTED_ROOT, verify_rim, data, now=NOW, root=nvidia_device_root()
        )


def test_sample_evidence_and_rims_do_not_match(vectors: Path) -> None:
    raw, chain = _hopper(vectors)
    nonce = SpdmEvidence.from_bytes(raw).nonce
    vbios = _rims(vectors, [RIMS[0]])
    msg = _reject(
        AttestationFailure.MEASUREMENT_MISMATCH,
        verify_gpu_evidence,
        raw,
        chain,
        nonce=nonce,
        rims=vbios,
        now=NOW,
    )
    assert "4 GPU measurement(s) differ" in msg and "index 1, 2, 9, 11" in msg
    assert "RIM version 96.00.5E.00.01" in msg and "VBIOS 96.00.9F.00.01" in msg
    driver = _rims(vectors, [RIMS[2]])
    msg = _reject(
        AttestationFailure.MEASUREMENT_MISMATCH,
        verify_gpu_evidence,
        raw,
        chain,
        nonce=nonce,
        rims=driver,
        now=NOW,
    )
    assert "15 GPU measurement(s) differ" in msg
    assert "RIM version 545.00" in msg and "driver 550.90.07" in msg


def test_matching_golden_values_pass(vectors: Path) -> None:
    # Golden values taken from the evidence itself (after its signature verified) must pass:
    # proves the comparison maps RIM index i to SPDM block i + 1.
    raw, chain = _hopper(vectors)
    ev = SpdmEvidence.from_bytes(raw)
    rim = _rims(vectors, [RIMS[0]])[0]
    from dataclasses import replace

    from veil.sdk.attestation.nvidia import ReferenceMeasurement

    measured = ev.measurements()
    golden = tuple(
        ReferenceMeasurement(m.index, m.name, (measured[m.index + 1],)) for m in rim.measurements
    )
    v = verify_gpu_evidence(
        raw, chain, nonce=ev.nonce, rims=[replace(rim, measurements=golden)], now=NOW
    )
    assert v.nonce == ev.nonce and dict(v.measurements)[1] == measured[1]


def test_wrong_nonce(vectors: Path) -> None:
    raw, chain = _hopper(vectors)
    _reject(
        AttestationFailure.STALE_NONCE,
        verify_gpu_evidence,
        raw,
        chain,
        nonce=bytes(32),
        rims=_rims(vectors, [RIMS[0]]),
        now=NOW,
    )


def test_no_rims_is_a_config_error(vectors: Path) -> None:
    raw, chain = _hopper(vectors)
    with pytest.raises(ConfigError):
        verify_gpu_evidence(raw, chain, nonce=bytes(32), rims=[], now=NOW)


def test_conflicting_rims(vectors: Path) -> None:
    raw, chain = _hopper(vectors)
    rims = _rims(vectors, [RIMS[0], RIMS[1]])  # same indices active in both
    msg = _reject(
        AttestationFailure.POLICY,
        verify_gpu_evidence,
        raw,
        chain,
        nonce=SpdmEvidence.from_bytes(raw).nonce,
        rims=rims,
        now=NOW,
    )
    assert "conflict" in msg


@pytest.mark.parametrize("where", [2, 40, 500, -200, -5])
def test_bit_flip_in_evidence(vectors: Path, where: int) -> None:
    raw, chain = _hopper(vectors)
    bad = bytearray(raw)
    bad[where] ^= 0x01
    with pytest.raises(AttestationError) as err:
        verify_spdm_signature(bytes(bad), chain, now=NOW)
    assert err.value.reason in (AttestationFailure.BAD_SIGNATURE, AttestationFailure.MALFORMED)


def test_swapped_chain(vectors: Path) -> None:
    raw, _ = _hopper(vectors)
    other_chain = _entries(vectors, "ppcie_gpu_evidence.json")[0][1]
    _reject(AttestationFailure.BAD_SIGNATURE, verify_spdm_signature, raw, other_chain, now=NOW)


def test_chain_without_pinned_root(vectors: Path) -> None:
    from cryptography import x509

    raw, chain = _hopper(vectors)
    certs = x509.load_pem_x509_certificates(chain)
    _reject(AttestationFailure.UNTRUSTED_ROOT, verify_spdm_signature, raw, certs[:3], now=NOW)


def test_truncated_evidence(vectors: Path) -> None:
    raw, _ = _hopper(vectors)
    msg = _reject(AttestationFailure.MALFORMED, SpdmEvidence.from_bytes, raw[:-10])
    assert "bytes" in msg


def test_offline_rim_store(vectors: Path) -> None:
    store = DirectoryRimStore(_nv(vectors))
    assert "Driver_RIM_test_no_gpu" in store.ids
    tag_ids = [i for i in store.ids if len(i) == 96]
    assert len(tag_ids) == 2
    for rim_id in tag_ids:
        assert verify_rim(store.get(rim_id), now=NOW).tag_id == rim_id
    _reject(AttestationFailure.POLICY, store.get, "no-such-rim")


def test_rim_ids_from_evidence(vectors: Path) -> None:
    raw, _ = _hopper(vectors)
    ev = SpdmEvidence.from_bytes(raw)
    assert ev.rim_ids == ("NV_GPU_DRIVER_GH100_550.90.07", "NV_GPU_VBIOS_1010_0200_882_96009F0001")
    switch = SpdmEvidence.from_bytes(_entries(vectors, "ppcie_switch_evidence.json")[0][0])
    assert switch.rim_ids == ("NV_SWITCH_BIOS_5612_0002_890_9610730001",)
    # The shared RIMs are for another VBIOS and driver: the air-gapped cache says so precisely.
    msg = _reject(AttestationFailure.POLICY, DirectoryRimStore(_nv(vectors)).get, ev.rim_ids[1])
    assert "NV_GPU_VBIOS_1010_0200_882_96009F0001" in msg
