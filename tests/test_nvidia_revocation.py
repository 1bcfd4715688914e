"""OCSP behind the RevocationSource protocol: the offline cache verifies cached responses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from veil.sdk.attestation.nvidia import OfflineOcspCache, verify_spdm_signature
from veil.sdk.errors import AttestationError, AttestationFailure, InsecureModeWarning

NOW = datetime(2025, 1, 1, tzinfo=UTC)
_KEY = ec.generate_private_key(ec.SECP384R1())


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


class _Pki:
    def __init__(self, vectors: Path) -> None:
        self.root_k = ec.generate_private_key(ec.SECP384R1())
        self.ica_k = ec.generate_private_key(ec.SECP384R1())
        self.dev_k = ec.generate_private_key(ec.SECP384R1())
        self.root = _cert("Test Root", self.root_k, "Test Root", self.root_k, True)
        self.ica = _cert("Test ICA", self.ica_k, "Test Root", self.root_k, True)
        self.dev = _cert("Test GPU", self.dev_k, "Test ICA", self.ica_k, False)
        d = vectors / "nvidia-gpu/nvtrust"
        raw = bytes.fromhex((d / "hopperAttestationReport.txt").read_text().strip())
        body = raw[:-96]
        r, s = decode_dss_signature(self.dev_k.sign(body, ec.ECDSA(hashes.SHA384())))
        self.evidence = body + r.to_bytes(48, "big") + s.to_bytes(48, "big")

    def response(
        self,
        cert: x509.Certificate,
        issuer: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        *,
        revoked: bool = False,
        this_update: datetime = NOW - timedelta(days=1),
        responder: x509.Certificate | None = None,
    ) -> bytes:
        status = ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD
        built = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert,
                issuer=issuer,
                algorithm=hashes.SHA256(),
                cert_status=status,
                this_update=this_update,
                next_update=this_update + timedelta(days=7),
                revocation_time=this_update if revoked else None,
                revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, responder or issuer)
            .sign(key, hashes.SHA384())
        )
        return built.public_bytes(serialization.Encoding.DER)

    def verify(self, cache: OfflineOcspCache) -> object:
        with pytest.warns(InsecureModeWarning):
            return verify_spdm_signature(
                self.evidence, [self.dev, self.ica], now=NOW, root=self.root, revocation=cache
            )


@pytest.fixture
def pki(vectors: Path) -> _Pki:
    return _Pki(vectors)


def _good(pki: _Pki) -> dict[int, bytes]:
    return {
        pki.dev.serial_number: pki.response(pki.dev, pki.ica, pki.ica_k),
        pki.ica.serial_number: pki.response(pki.ica, pki.root, pki.root_k),
    }


def _reason(pki: _Pki, cache: OfflineOcspCache) -> AttestationFailure:
    with pytest.raises(AttestationError) as err:
        pki.verify(cache)
    return err.value.reason


def test_good_responses_pass(pki: _Pki) -> None:
    assert pki.verify(OfflineOcspCache(_good(pki))) is not None


def test_revoked_device_certificate(pki: _Pki) -> None:
    responses = _good(pki)
    responses[pki.dev.serial_number] = pki.response(pki.dev, pki.ica, pki.ica_k, revoked=True)
    assert _reason(pki, OfflineOcspCache(responses)) is AttestationFailure.REVOKED


def test_missing_response_fails_closed(pki: _Pki) -> None:
    responses = _good(pki)
    del responses[pki.ica.serial_number]
    assert _reason(pki, OfflineOcspCache(responses)) is AttestationFailure.POLICY


def test_response_signed_by_someone_else(pki: _Pki) -> None:
    responses = _good(pki)
    rogue = _cert("Rogue", _KEY, "Rogue", _KEY, False)
    responses[pki.dev.serial_number] = pki.response(pki.dev, pki.ica, _KEY, responder=rogue)
    assert _reason(pki, OfflineOcspCache(responses)) is AttestationFailure.BAD_SIGNATURE


def test_stale_response(pki: _Pki) -> None:
    responses = _good(pki)
    old = NOW - timedelta(days=30)
    responses[pki.dev.serial_number] = pki.response(pki.dev, pki.ica, pki.ica_k, this_update=old)
    assert _reason(pki, OfflineOcspCache(responses)) is AttestationFailure.EXPIRED


def test_garbage_response(pki: _Pki) -> None:
    responses = _good(pki)
    responses[pki.dev.serial_number] = b"\x30\x03\x0a\x01\x00"
    assert _reason(pki, OfflineOcspCache(responses)) in (
        AttestationFailure.MALFORMED,
        AttestationFailure.POLICY,
    )
