"""The simulated TEE: SEV-SNP evidence in AMD's exact format, for machines without SNP hardware.

It creates, once per data directory, an ARK (RSA-4096, self-signed, RSASSA-PSS/SHA-384), an ASK
signed by it, and a VCEK-like ECDSA P-384 key whose certificate carries AMD's VCEK extensions
(productName, TCB SPLs, hwID). Reports are laid out byte for byte as AMD's ATTESTATION_REPORT and
signed like one, so the SDK verifies them with the very code that verifies real hardware — after
the client explicitly pins ``simulated-root.pem``, which warns every time.

Key material lives in ``DATA_DIR/simulated-tee/`` (mode 0600). It proves nothing about hardware:
anyone with that directory can forge evidence. That is the point of a *simulated* TEE.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from veil.enclave._files import write_private
from veil.enclave.tee._base import RawEvidence
from veil.sdk.attestation.der import encode_ia5, encode_integer
from veil.sdk.attestation.snp_report import (
    Product,
    TcbVersion,
    encode_report,
    encode_signature,
)

__all__ = ["DEFAULT_GUEST_POLICY", "SIMULATED_TCB", "SimulatedSnp"]

PRODUCT = Product.MILAN
PRODUCT_NAME = "Milan-B0"
SIMULATED_TCB = TcbVersion(bootloader=4, tee=0, snp=22, microcode=213)
DEFAULT_GUEST_POLICY = 1 << 17 | 1 << 16  # reserved-must-be-one, SMT allowed; debug off
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_AMD = "1.3.6.1.4.1.3704.1."


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Veil Simulated TEE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Veil (not AMD)"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ext(oid: str, der: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), der)


class SimulatedSnp:
    """A simulated SEV-SNP platform whose keys live in a data directory."""

    name = "simulated"

    def __init__(
        self,
        *,
        vcek_key: ec.EllipticCurvePrivateKey,
        chain: tuple[x509.Certificate, x509.Certificate, x509.Certificate],
        chip_id: bytes,
        sealing_secret: bytes,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._vcek_key = vcek_key
        self._chain = chain
        self._chain_der = tuple(c.public_bytes(serialization.Encoding.DER) for c in chain)
        self._chip_id = chip_id
        self._sealing_secret = sealing_secret
        self._random = random

    @property
    def root_pem(self) -> bytes:
        """The ARK certificate a client pins (``--trust-root``)."""
        return self._chain[2].public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load_or_create(
        cls,
        data_dir: Path,
        *,
        now: dt.datetime | None = None,
        random: Callable[[int], bytes] = os.urandom,
    ) -> SimulatedSnp:
        """Load the simulated platform from ``data_dir/simulated-tee``, creating it if absent."""
        folder = data_dir / "simulated-tee"
        if not (folder / "chain.pem").exists():
            cls._create(folder, now or dt.datetime.now(dt.UTC), random)
        pem = serialization.load_pem_private_key
        vcek_key = pem((folder / "vcek.key").read_bytes(), password=None)
        if not isinstance(vcek_key, ec.EllipticCurvePrivateKey):
            raise TypeError("simulated VCEK key must be ECDSA P-384")
        certs = x509.load_pem_x509_certificates((folder / "chain.pem").read_bytes())
        vcek, ask, ark = certs
        return cls(
            vcek_key=vcek_key,
            chain=(vcek, ask, ark),
            chip_id=(folder / "chip_id").read_bytes(),
            sealing_secret=(folder / "sealing.key").read_bytes(),
            random=random,
        )

    @staticmethod
    def _create(folder: Path, now: dt.datetime, random: Callable[[int], bytes]) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
        vcek_key = ec.generate_private_key(ec.SECP384R1())
        chip_id = random(64)
        start = now - dt.timedelta(days=1)

        def builder(
            subject: x509.Name, issuer: x509.Name, key: object, years: int
        ) -> x509.CertificateBuilder:
            return (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(issuer)
                .public_key(key)  # type: ignore[arg-type]
                .serial_number(int.from_bytes(random(8), "big") >> 1 or 1)
                .not_valid_before(start)
                .not_valid_after(start + dt.timedelta(days=365 * years))
            )

        ark_name, ask_name = _name("ARK-Milan-Simulated"), _name("SEV-Milan-Simulated")
        ark = (
            builder(ark_name, ark_name, ark_key.public_key(), 25)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ark_key, hashes.SHA384(), rsa_padding=_PSS)
        )
        ask = (
            builder(ask_name, ark_name, ask_key.public_key(), 25)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ark_key, hashes.SHA384(), rsa_padding=_PSS)
        )
        tcb = SIMULATED_TCB
        vcek = (
            builder(_name("SEV-VCEK"), ask_name, vcek_key.public_key(), 7)
            .add_extension(_ext(_AMD + "1", encode_integer(1)), critical=False)
            .add_extension(_ext(_AMD + "2", encode_ia5(PRODUCT_NAME)), critical=False)
            .add_extension(_ext(_AMD + "3.1", encode_integer(tcb.bootloader)), critical=False)
            .add_extension(_ext(_AMD + "3.2", encode_integer(tcb.tee)), critical=False)
            .add_extension(_ext(_AMD + "3.3", encode_integer(tcb.snp)), critical=False)
            .add_extension(_ext(_AMD + "3.8", encode_integer(tcb.microcode)), critical=False)
            .add_extension(_ext(_AMD + "4", chip_id), critical=False)
            .sign(ask_key, hashes.SHA384(), rsa_padding=_PSS)
        )
        pem = serialization.Encoding.PEM
        write_private(
            folder / "vcek.key",
            vcek_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        write_private(
            folder / "ask.key",
            ask_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        write_private(
            folder / "ark.key",
            ark_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        write_private(folder / "chip_id", chip_id)
        write_private(folder / "sealing.key", random(32))
        # chain.pem is the last file written: its presence marks a complete platform.
        write_private(
            folder / "chain.pem",
            vcek.public_bytes(pem) + ask.public_bytes(pem) + ark.public_bytes(pem),
        )

    def evidence(
        self,
        report_data: bytes,
        measurement: bytes,
        *,
        guest_policy: int = DEFAULT_GUEST_POLICY,
        vmpl: int = 0,
        reported_tcb: TcbVersion = SIMULATED_TCB,
        chip_id: bytes | None = None,
    ) -> RawEvidence:
        """Sign a report over ``report_data`` (64 bytes) claiming ``measurement`` (48 bytes).

        The keyword arguments exist to produce the hostile variants tests need (a debug guest,
        another VMPL, a TCB or chip id that disagrees with the VCEK).
        """
        reported = reported_tcb.to_u64(PRODUCT)
        body = encode_report(
            version=3,
            policy=guest_policy,
            vmpl=vmpl,
            report_data=report_data,
            measurement=measurement,
            report_id=self._random(32),
            reported_tcb=reported,
            current_tcb=reported,
            cpuid=(0x19, 0x01, 0x01),
            chip_id=self._chip_id if chip_id is None else chip_id,
        )
        return self.sign(body)

    def sign(self, body: bytes) -> RawEvidence:
        """Sign the first 0x2A0 bytes of a report as the VCEK would."""
        der = self._vcek_key.sign(body, ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        return RawEvidence(
            tee="sev-snp", report=body + encode_signature(r, s), cert_chain=self._chain_der
        )

    def sealing_key(self, label: bytes) -> bytes:
        """HMAC-SHA256 (a PRF) of the platform's sealing secret (on SNP: MSG_KEY_REQ)."""
        return hmac.new(self._sealing_secret, b"veil/sealing/v1\0" + label, hashlib.sha256).digest()
