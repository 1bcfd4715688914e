"""The simulated TEE produces real-format evidence that the same verifier checks; every
failure mode of the verifier has its own test here."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from veil.enclave.tee._simulated import DEFAULT_GUEST_POLICY, SIMULATED_TCB, SimulatedSnp
from veil.sdk import (
    AttestationError,
    AttestationFailure,
    AttestationPolicy,
    InsecureModeWarning,
    SnpCertChain,
    TcbVersion,
    TrustRoot,
    verify_snp_report,
)
from veil.sdk.attestation.snp_report import REPORT_SIZE

MEASUREMENT = hashlib.sha384(b"veil test enclave").digest()
REPORT_DATA = hashlib.sha512(b"nonce and key").digest()


@pytest.fixture(scope="module")
def sim(tee_template: Path) -> SimulatedSnp:
    return SimulatedSnp.load_or_create(tee_template.parent)


@pytest.fixture(scope="module")
def now(sim: SimulatedSnp) -> datetime:
    return datetime.now(UTC)


def _policy(sim: SimulatedSnp, **changes: object) -> AttestationPolicy:
    base = AttestationPolicy.simulated_for_tests(sim.root_pem, measurements=[MEASUREMENT])
    return replace(base, **changes)  # type: ignore[arg-type]


def _verify(
    sim: SimulatedSnp, report: bytes, policy: AttestationPolicy, now: datetime, **kw: object
):  # type: ignore[no-untyped-def]
    chain = SnpCertChain.from_pem(*sim.evidence(REPORT_DATA, MEASUREMENT).cert_chain)
    kw.setdefault("expected_report_data", REPORT_DATA)
    return verify_snp_report(report, chain, policy, now=now, **kw)  # type: ignore[arg-type]


def _reason(exc: pytest.ExceptionInfo[AttestationError]) -> AttestationFailure:
    return exc.value.reason


def test_simulated_report_has_amd_layout(sim: SimulatedSnp) -> None:
    ev = sim.evidence(REPORT_DATA, MEASUREMENT)
    assert len(ev.report) == REPORT_SIZE
    assert ev.report[0x50:0x90] == REPORT_DATA
    assert ev.report[0x90:0xC0] == MEASUREMENT
    assert len(ev.cert_chain) == 3


def test_simulated_evidence_verifies_and_warns_every_time(sim: SimulatedSnp, now: datetime) -> None:
    report = sim.evidence(REPORT_DATA, MEASUREMENT).report
    for _ in range(2):
        with pytest.warns(InsecureModeWarning, match="test root"):
            verified = _verify(sim, report, _policy(sim), now)
    assert verified.insecure_root
    assert verified.measurement == MEASUREMENT
    assert verified.reported_tcb == SIMULATED_TCB


def test_simulated_evidence_is_rejected_under_amd_roots(sim: SimulatedSnp, now: datetime) -> None:
    report = sim.evidence(REPORT_DATA, MEASUREMENT).report
    policy = replace(AttestationPolicy.production(measurements=[MEASUREMENT]))
    with pytest.raises(AttestationError) as err:
        _verify(sim, report, policy, now)
    assert _reason(err) is AttestationFailure.UNTRUSTED_ROOT


# Offsets of every field inside the signed part of the report (0x000..0x29F).
FIELDS = {
    "version": 0x00,
    "guest_svn": 0x04,
    "policy": 0x08,
    "family_id": 0x10,
    "image_id": 0x20,
    "vmpl": 0x30,
    "current_tcb": 0x38,
    "platform_info": 0x40,
    "flags": 0x48,
    "report_data": 0x50,
    "measurement": 0x90,
    "host_data": 0xC0,
    "id_key_digest": 0xE0,
    "author_key_digest": 0x110,
    "report_id": 0x140,
    "report_id_ma": 0x160,
    "reported_tcb": 0x180,
    "cpuid": 0x188,
    "chip_id": 0x1A0,
    "committed_tcb": 0x1E0,
    "launch_tcb": 0x1F0,
    "reserved_tail": 0x29F,
    "signature_r": 0x2A0,
    "signature_s": 0x2E8,
}


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_bit_flip_in_each_field_is_rejected(sim: SimulatedSnp, now: datetime, field: str) -> None:
    report = bytearray(sim.evidence(REPORT_DATA, MEASUREMENT).report)
    report[FIELDS[field]] ^= 0x04
    with warnings.catch_warnings(record=True), pytest.raises(AttestationError) as err:
        _verify(sim, bytes(report), _policy(sim), now)
    assert _reason(err) in {
        AttestationFailure.BAD_SIGNATURE,
        AttestationFailure.MALFORMED,
        AttestationFailure.UNSUPPORTED,
    }


def test_truncated_report_is_malformed(sim: SimulatedSnp, now: datetime) -> None:
    report = sim.evidence(REPORT_DATA, MEASUREMENT).report[:-4]
    with warnings.catch_warnings(record=True), pytest.raises(AttestationError) as err:
        _verify(sim, report, _policy(sim), now)
    assert _reason(err) is AttestationFailure.MALFORMED


def test_debug_guest_is_rejected(sim: SimulatedSnp, now: datetime) -> None:
    report = sim.evidence(
        REPORT_DATA, MEASUREMENT, guest_policy=DEFAULT_GUEST_POLICY | 1 << 19
    ).report
    with pytest.warns(InsecureModeWarning), pytest.raises(AttestationError) as err:
        _verify(sim, report, _policy(sim), now)
    assert _reason(err) is AttestationFailure.DEBUG_ENCLAVE


def test_unexpected_measurement_is_rejected(sim: SimulatedSnp, now: datetime) -> None:
    report = sim.evidence(REPORT_DATA, hashlib.sha384(b"other code").digest()).report
    with pytest.warns(InsecureModeWarning), pytest.raises(AttestationError) as err:
        _verify(sim, report, _policy(sim), now)
    assert _reason(err) is AttestationFailure.MEASUREMENT_MISMATCH


def test_tcb_below_minimum_is_rejected(sim: SimulatedSnp, now: datetime) -> None:
    report = sim.evidence(REPORT_DATA, MEASUREMENT).report
    minimum = replace(SIMULATED_TCB, snp=SIMULATED_TCB.snp + 1)
    with pytest.warns(InsecureModeWarning), pytest.raises(AttestationError) as err:
        _verify(sim, report, _policy(sim, min_tcb=minimum), now)
    assert _reason(err) is AttestationFailure.TCB_TOO_LOW
    with pytest.warns(InsecureModeWarning):
        assert _verify(sim, report, _policy(sim, min_tcb=SIMULATED_TCB), now)


def test_disallowed_vmpl_is_rejected(sim: SimulatedSnp, now: datetime) -> None:
    report = sim.evidence(REPORT_DATA, MEASUREMENT, vmpl=2).report
    with pytest.warns(InsecureModeWarning), pytest.raises(AttestationError) as err:
        _verify(sim, report, _policy(sim, allowed_vmpls=frozenset({0})), now)
    assert _reason(err) is AttestationFailure.VMPL_NOT_ALLOWED


def test_unbound_key_is_rejected(sim: SimulatedSnp, now: datetime) -> None:
    report = sim.evidence(REPORT_DATA, MEASUREMENT).report
    with pytest.warns(InsecureModeWarning), pytest.raises(AttestationError) as err:
        _verify(sim, report, _policy(sim), now, expected_report_data=hashlib.sha512(b"x").digest())
    assert _reason(err) is AttestationFailure.UNBOUND_KEY


def test_stale_nonce_is_rejected(sim: SimulatedSnp, now: datetime) -> None:
    report = sim.evidence(REPORT_DATA, MEASUREMENT).report
    policy = _policy(sim, max_evidence_age=timedelta(seconds=60))
    with pytest.warns(InsecureModeWarning), pytest.raises(AttestationError) as err:
        _verify(sim, report, policy, now, challenge_issued_at=now - timedelta(seconds=61))
    assert _reason(err) is AttestationFailure.STALE_NONCE
    with pytest.warns(InsecureModeWarning):
        assert _verify(sim, report, policy, now, challenge_issued_at=now - timedelta(seconds=59))


def test_reported_tcb_disagreeing_with_vcek_is_rejected(sim: SimulatedSnp, now: datetime) -> None:
    other = TcbVersion(bootloader=4, tee=0, snp=99, microcode=213)
    report = sim.evidence(REPORT_DATA, MEASUREMENT, reported_tcb=other).report
    with pytest.warns(InsecureModeWarning), pytest.raises(AttestationError) as err:
        _verify(sim, report, _policy(sim), now)
    assert _reason(err) is AttestationFailure.CERT_MISMATCH


def test_chip_id_disagreeing_with_vcek_is_rejected(sim: SimulatedSnp, now: datetime) -> None:
    report = sim.evidence(REPORT_DATA, MEASUREMENT, chip_id=bytes(range(64))).report
    with pytest.warns(InsecureModeWarning), pytest.raises(AttestationError) as err:
        _verify(sim, report, _policy(sim), now)
    assert _reason(err) is AttestationFailure.CERT_MISMATCH


def test_certificates_not_yet_valid_are_rejected(sim: SimulatedSnp) -> None:
    report = sim.evidence(REPORT_DATA, MEASUREMENT).report
    with pytest.warns(InsecureModeWarning), pytest.raises(AttestationError) as err:
        _verify(sim, report, _policy(sim), datetime(2000, 1, 1, tzinfo=UTC))
    assert _reason(err) is AttestationFailure.CERT_EXPIRED


def test_other_platforms_root_is_rejected(sim: SimulatedSnp, now: datetime, tmp_path: Path) -> None:
    other = SimulatedSnp.load_or_create(tmp_path)
    report = sim.evidence(REPORT_DATA, MEASUREMENT).report
    policy = AttestationPolicy.simulated_for_tests(
        TrustRoot.from_pem(other.root_pem), measurements=[MEASUREMENT]
    )
    with pytest.raises(AttestationError) as err:
        _verify(sim, report, policy, now)
    assert _reason(err) is AttestationFailure.UNTRUSTED_ROOT


def test_swapped_vcek_from_other_platform_is_rejected(
    sim: SimulatedSnp, now: datetime, tmp_path: Path
) -> None:
    other = SimulatedSnp.load_or_create(tmp_path)
    report = sim.evidence(REPORT_DATA, MEASUREMENT).report
    own = SnpCertChain.from_pem(*sim.evidence(REPORT_DATA, MEASUREMENT).cert_chain)
    foreign = SnpCertChain.from_pem(*other.evidence(REPORT_DATA, MEASUREMENT).cert_chain)
    mixed = SnpCertChain(vcek=foreign.vcek, ask=own.ask, ark=own.ark)
    with warnings.catch_warnings(record=True), pytest.raises(AttestationError) as err:
        verify_snp_report(report, mixed, _policy(sim), now=now, expected_report_data=REPORT_DATA)
    assert _reason(err) is AttestationFailure.UNTRUSTED_ROOT
