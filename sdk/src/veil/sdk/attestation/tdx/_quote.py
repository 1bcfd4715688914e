"""Parse Intel DCAP TDX quotes (v4 and v5) into frozen objects.

Layout (all integers little-endian):

    header (48)            version u16, attestation key type u16, TEE type u32, 4 reserved,
                           QE vendor id (16), user data (20)
    v5 only                body type u16 (2 = TD 1.0, 3 = TD 1.5), body size u32
    body                   TD report body: 584 bytes (TD 1.0) or 648 bytes (TD 1.5)
    signature data len u32
    signature data         ECDSA sig (64), attestation key (64), certification data
                           (type 6: QE report (384), QE report sig (64), QE auth data (u16 len),
                           nested certification data type 5: PEM PCK certificate chain)

Nothing here checks a signature: parsing only proves the bytes are well formed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography import x509

from veil.sdk.attestation.tdx._x509 import load_certificates
from veil.sdk.errors import AttestationError, AttestationFailure

__all__ = ["QeReport", "TdReportBody", "TdxQuote", "TdxQuoteSignature"]

HEADER_SIZE = 48
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
QE_REPORT_SIZE = 384
TEE_TYPE_TDX = 0x00000081
ATT_KEY_TYPE_ECDSA_P256 = 2
CERT_DATA_QE_REPORT = 6
CERT_DATA_PCK_CHAIN = 5
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
_BODY_TYPE_TD10 = 2
_BODY_TYPE_TD15 = 3


def _malformed(message: str) -> AttestationError:
    return AttestationError(AttestationFailure.MALFORMED, message)


class _Reader:
    """Bounds-checked cursor over a byte string; every short read is a precise MALFORMED."""

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what

    @property
    def pos(self) -> int:
        return self._pos

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self._pos + n > len(self._data):
            raise _malformed(
                f"{self._what} is {len(self._data)} bytes, {field} needs {n} bytes "
                f"at offset {self._pos}"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u16(self, field: str) -> int:
        value: int = struct.unpack("<H", self.take(2, field))[0]
        return value

    def u32(self, field: str) -> int:
        value: int = struct.unpack("<I", self.take(4, field))[0]
        return value


@dataclass(frozen=True)
class TdReportBody:
    """The TD report body the quote signs (TD 1.0 fields, plus the two TD 1.5 fields)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn_2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    @property
    def debug(self) -> bool:
        """TDATTRIBUTES bit 0 (TUD.DEBUG): the TD's memory is readable by the host."""
        return bool(self.td_attributes[0] & 0x01)

    @classmethod
    def from_bytes(cls, raw: bytes) -> TdReportBody:
        if len(raw) not in (TD10_BODY_SIZE, TD15_BODY_SIZE):
            raise _malformed(
                f"TD report body is {len(raw)} bytes, expected {TD10_BODY_SIZE} or {TD15_BODY_SIZE}"
            )
        r = _Reader(raw, "TD report body")
        fields = {
            "tee_tcb_svn": r.take(16, "TEE_TCB_SVN"),
            "mr_seam": r.take(48, "MRSEAM"),
            "mr_signer_seam": r.take(48, "MRSIGNERSEAM"),
            "seam_attributes": r.take(8, "SEAMATTRIBUTES"),
            "td_attributes": r.take(8, "TDATTRIBUTES"),
            "xfam": r.take(8, "XFAM"),
            "mr_td": r.take(48, "MRTD"),
            "mr_config_id": r.take(48, "MRCONFIGID"),
            "mr_owner": r.take(48, "MROWNER"),
            "mr_owner_config": r.take(48, "MROWNERCONFIG"),
            "rtmr0": r.take(48, "RTMR0"),
            "rtmr1": r.take(48, "RTMR1"),
            "rtmr2": r.take(48, "RTMR2"),
            "rtmr3": r.take(48, "RTMR3"),
            "report_data": r.take(64, "REPORTDATA"),
        }
        if len(raw) == TD15_BODY_SIZE:
            return cls(
                **fields,
                tee_tcb_svn_2=r.take(16, "TEE_TCB_SVN_2"),
                mr_service_td=r.take(48, "MRSERVICETD"),
            )
        return cls(**fields)


@dataclass(frozen=True)
class QeReport:
    """The SGX enclave report of the Quoting Enclave (384 bytes)."""

    raw: bytes
    cpu_svn: bytes
    misc_select: bytes
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes

    @classmethod
    def from_bytes(cls, raw: bytes) -> QeReport:
        if len(raw) != QE_REPORT_SIZE:
            raise _malformed(f"QE report is {len(raw)} bytes, expected {QE_REPORT_SIZE}")
        return cls(
            raw=raw,
            cpu_svn=raw[0:16],
            misc_select=raw[16:20],
            attributes=raw[48:64],
            mr_enclave=raw[64:96],
            mr_signer=raw[128:160],
            isv_prod_id=int.from_bytes(raw[256:258], "little"),
            isv_svn=int.from_bytes(raw[258:260], "little"),
            report_data=raw[320:384],
        )


@dataclass(frozen=True)
class TdxQuoteSignature:
    """The quote's ECDSA signature data with the QE certification data (type 6)."""

    signature: bytes
    attestation_key: bytes
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_raw: bytes
    pck_chain: tuple[x509.Certificate, ...]

    @classmethod
    def from_bytes(cls, raw: bytes) -> TdxQuoteSignature:
        r = _Reader(raw, "quote signature data")
        signature = r.take(64, "ECDSA signature")
        attestation_key = r.take(64, "attestation key")
        cert_type = r.u16("certification data type")
        cert_size = r.u32("certification data size")
        if cert_type != CERT_DATA_QE_REPORT:
            raise _malformed(
                f"quote certification data type is {cert_type}, expected {CERT_DATA_QE_REPORT}"
            )
        if cert_size != r.remaining():
            raise _malformed(
                f"certification data is {r.remaining()} bytes, its header says {cert_size}"
            )
        qe_report = QeReport.from_bytes(r.take(QE_REPORT_SIZE, "QE report"))
        qe_report_signature = r.take(64, "QE report signature")
        auth_size = r.u16("QE auth data size")
        qe_auth_data = r.take(auth_size, "QE auth data")
        inner_type = r.u16("nested certification data type")
        inner_size = r.u32("nested certification data size")
        if inner_type != CERT_DATA_PCK_CHAIN:
            raise _malformed(
                f"nested certification data type is {inner_type}, expected {CERT_DATA_PCK_CHAIN}"
            )
        if inner_size != r.remaining():
            raise _malformed(f"PCK chain is {r.remaining()} bytes, its header says {inner_size}")
        pck_chain_raw = r.take(inner_size, "PCK certificate chain")
        return cls(
            signature=signature,
            attestation_key=attestation_key,
            qe_report=qe_report,
            qe_report_signature=qe_report_signature,
            qe_auth_data=qe_auth_data,
            pck_chain_raw=pck_chain_raw,
            pck_chain=load_certificates(pck_chain_raw, "quote PCK chain"),
        )


@dataclass(frozen=True)
class TdxQuote:
    """A parsed (not yet verified) TDX DCAP quote, v4 or v5."""

    version: int
    attestation_key_type: int
    tee_type: int
    qe_vendor_id: bytes
    user_data: bytes
    body: TdReportBody
    signed_bytes: bytes
    signature: TdxQuoteSignature
    raw: bytes

    @classmethod
    def from_bytes(cls, raw: bytes) -> TdxQuote:
        """Parse a quote.

        Bytes after the declared signature data (zero padding some tools emit, or test junk)
        are covered by nothing and ignored; ``raw`` holds the quote without them.
        """
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise _malformed(f"quote must be bytes, got {type(raw).__name__}")
        raw = bytes(raw)
        r = _Reader(raw, "quote")
        header = r.take(HEADER_SIZE, "header")
        version, key_type, tee_type = struct.unpack_from("<HHI", header, 0)
        if version not in (4, 5):
            raise _malformed(f"quote version is {version}, only 4 and 5 are supported")
        if key_type != ATT_KEY_TYPE_ECDSA_P256:
            raise _malformed(
                f"attestation key type is {key_type}, expected {ATT_KEY_TYPE_ECDSA_P256} "
                "(ECDSA P-256)"
            )
        if tee_type != TEE_TYPE_TDX:
            raise _malformed(f"TEE type is {tee_type:#x}, expected {TEE_TYPE_TDX:#x} (TDX)")
        if version == 4:
            body_raw = r.take(TD10_BODY_SIZE, "TD report body")
        else:
            body_type = r.u16("body type")
            body_size = r.u32("body size")
            expected = {_BODY_TYPE_TD10: TD10_BODY_SIZE, _BODY_TYPE_TD15: TD15_BODY_SIZE}
            if body_type not in expected:
                raise _malformed(f"v5 body type is {body_type}, expected 2 (TD 1.0) or 3 (TD 1.5)")
            if body_size != expected[body_type]:
                raise _malformed(
                    f"v5 body type {body_type} needs {expected[body_type]} bytes, "
                    f"header says {body_size}"
                )
            body_raw = r.take(body_size, "TD report body")
        signed_end = r.pos
        sig_len = r.u32("signature data length")
        if sig_len > r.remaining():
            raise _malformed(
                f"quote is {len(raw)} bytes, header says signature data of {sig_len} bytes "
                f"at offset {r.pos}"
            )
        sig_raw = r.take(sig_len, "signature data")
        return cls(
            version=version,
            attestation_key_type=key_type,
            tee_type=tee_type,
            qe_vendor_id=header[12:28],
            user_data=header[28:48],
            body=TdReportBody.from_bytes(body_raw),
            signed_bytes=raw[:signed_end],
            signature=TdxQuoteSignature.from_bytes(sig_raw),
            raw=raw[: r.pos],
        )
