"""AMD SEV-SNP ATTESTATION_REPORT: the fixed 1184-byte layout, parsed once into a frozen object.

Layout per AMD SEV-SNP ABI specification (publication 56860), Table 22 "ATTESTATION_REPORT
Structure"; all integers little-endian. Versions 2, 3 and 5 share the layout; version 3 added the
CPUID fields and version 5 the mitigation vectors, in bytes that were reserved before.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from veil.sdk.errors import AttestationError, AttestationFailure

__all__ = ["REPORT_SIZE", "SIGNED_SIZE", "Product", "SnpReport", "TcbVersion"]

REPORT_SIZE = 0x4A0  # 1184
SIGNED_SIZE = 0x2A0  # the signature covers bytes 0x000..0x29F
_SIG_COMPONENT = 72  # r and s, little-endian, zero-padded to 72 bytes each

POLICY_DEBUG_BIT = 19
POLICY_RESERVED_ONE_BIT = 17
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1


class Product(enum.Enum):
    """AMD EPYC product line; it decides the root key and the TCB byte layout."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @classmethod
    def from_name(cls, name: str) -> Product:
        """Map a VCEK productName ("Milan-B0", "Genoa", "Turin") to a product."""
        base = name.split("-", 1)[0].strip().lower()
        for product in cls:
            if product.value.lower() == base:
                return product
        raise AttestationError(AttestationFailure.UNSUPPORTED, f"unknown AMD product {name!r}")

    @property
    def chip_id_len(self) -> int:
        """Turin VCEKs identify the chip with 8 bytes; earlier products with 64."""
        return 8 if self is Product.TURIN else 64


@dataclass(frozen=True, order=False)
class TcbVersion:
    """The security patch levels that make up an SNP TCB version."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int = 0  # Turin only

    @classmethod
    def from_u64(cls, raw: int, product: Product) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if product is Product.TURIN:
            # Turin: FMC, BOOT_LOADER, TEE, SNP, reserved x3, MICROCODE.
            return cls(fmc=b[0], bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7])
        # Milan / Genoa: BOOT_LOADER, TEE, reserved x4, SNP, MICROCODE.
        return cls(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def to_u64(self, product: Product) -> int:
        if product is Product.TURIN:
            b = bytes([self.fmc, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode])
        else:
            b = bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])
        return int.from_bytes(b, "little")

    def meets(self, minimum: TcbVersion) -> bool:
        """True when every component is at least the minimum's."""
        return (
            self.bootloader >= minimum.bootloader
            and self.tee >= minimum.tee
            and self.snp >= minimum.snp
            and self.microcode >= minimum.microcode
            and self.fmc >= minimum.fmc
        )

    def __str__(self) -> str:
        fmc = f" fmc={self.fmc}" if self.fmc else ""
        return f"bl={self.bootloader} tee={self.tee} snp={self.snp} ucode={self.microcode}{fmc}"


def _u32(raw: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", raw, off)[0])


def _u64(raw: bytes, off: int) -> int:
    return int(struct.unpack_from("<Q", raw, off)[0])


@dataclass(frozen=True)
class SnpReport:
    """A parsed (not yet verified) SEV-SNP attestation report."""

    raw: bytes
    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb_raw: int
    platform_info: int
    flags: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb_raw: int
    cpuid_fam_id: int
    cpuid_mod_id: int
    cpuid_step: int
    chip_id: bytes
    committed_tcb_raw: int
    launch_tcb_raw: int
    signature_r: int
    signature_s: int

    @classmethod
    def from_bytes(cls, raw: bytes) -> SnpReport:
        """Parse the 1184-byte report; raise ``AttestationError(MALFORMED)`` on any defect."""
        raw = bytes(raw)
        if len(raw) != REPORT_SIZE:
            raise AttestationError(
                AttestationFailure.MALFORMED,
                f"SEV-SNP report is {len(raw)} bytes, expected {REPORT_SIZE}",
            )
        version = _u32(raw, 0x00)
        if version < 2 or version > 5:
            raise AttestationError(
                AttestationFailure.MALFORMED, f"unsupported SEV-SNP report version {version}"
            )
        signature_algo = _u32(raw, 0x34)
        r = int.from_bytes(raw[0x2A0 : 0x2A0 + _SIG_COMPONENT], "little")
        s = int.from_bytes(raw[0x2E8 : 0x2E8 + _SIG_COMPONENT], "little")
        return cls(
            raw=raw,
            version=version,
            guest_svn=_u32(raw, 0x04),
            policy=_u64(raw, 0x08),
            family_id=raw[0x10:0x20],
            image_id=raw[0x20:0x30],
            vmpl=_u32(raw, 0x30),
            signature_algo=signature_algo,
            current_tcb_raw=_u64(raw, 0x38),
            platform_info=_u64(raw, 0x40),
            flags=_u32(raw, 0x48),
            report_data=raw[0x50:0x90],
            measurement=raw[0x90:0xC0],
            host_data=raw[0xC0:0xE0],
            id_key_digest=raw[0xE0:0x110],
            author_key_digest=raw[0x110:0x140],
            report_id=raw[0x140:0x160],
            report_id_ma=raw[0x160:0x180],
            reported_tcb_raw=_u64(raw, 0x180),
            cpuid_fam_id=raw[0x188] if version >= 3 else 0,
            cpuid_mod_id=raw[0x189] if version >= 3 else 0,
            cpuid_step=raw[0x18A] if version >= 3 else 0,
            chip_id=raw[0x1A0:0x1E0],
            committed_tcb_raw=_u64(raw, 0x1E0),
            launch_tcb_raw=_u64(raw, 0x1F0),
            signature_r=r,
            signature_s=s,
        )

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def debug_allowed(self) -> bool:
        """Guest policy bit 19: the hypervisor may debug (read) this guest's memory."""
        return bool(self.policy >> POLICY_DEBUG_BIT & 1)

    @property
    def signing_key(self) -> int:
        """Bits 4:2 of the flags word: 0 = VCEK, 1 = VLEK, 7 = none."""
        return (self.flags >> 2) & 0b111

    @property
    def chip_id_masked(self) -> bool:
        """Flags bit 1: MASK_CHIP_ID — the chip id was zeroed by the guest's request."""
        return bool(self.flags >> 1 & 1)

    def reported_tcb(self, product: Product) -> TcbVersion:
        return TcbVersion.from_u64(self.reported_tcb_raw, product)

    def product_hint(self) -> Product | None:
        """The product from the CPUID family/model (report version 3 and later), if known."""
        if self.version < 3:
            return None
        if self.cpuid_fam_id == 0x19:
            return Product.GENOA if self.cpuid_mod_id >= 0x10 else Product.MILAN
        if self.cpuid_fam_id == 0x1A:
            return Product.TURIN
        return None


def encode_report(
    *,
    version: int = 3,
    guest_svn: int = 0,
    policy: int = 1 << POLICY_RESERVED_ONE_BIT | 1 << 16,
    vmpl: int = 0,
    current_tcb: int = 0,
    platform_info: int = 0,
    report_data: bytes,
    measurement: bytes,
    host_data: bytes = bytes(32),
    report_id: bytes = bytes(32),
    reported_tcb: int = 0,
    cpuid: tuple[int, int, int] = (0x19, 0x01, 0x01),
    chip_id: bytes = bytes(64),
) -> bytes:
    """Lay out the signed part of a report (0x000..0x29F). Used by the simulated TEE."""
    if len(report_data) != 64 or len(measurement) != 48 or len(chip_id) != 64:
        raise ValueError("report_data is 64 bytes, measurement 48, chip_id 64")
    buf = bytearray(SIGNED_SIZE)
    struct.pack_into("<IIQ", buf, 0x00, version, guest_svn, policy)
    struct.pack_into("<II", buf, 0x30, vmpl, SIGNATURE_ALGO_ECDSA_P384_SHA384)
    struct.pack_into("<QQ", buf, 0x38, current_tcb, platform_info)
    buf[0x50:0x90] = report_data
    buf[0x90:0xC0] = measurement
    buf[0xC0:0xE0] = host_data
    buf[0x140:0x160] = report_id
    struct.pack_into("<Q", buf, 0x180, reported_tcb)
    if version >= 3:
        buf[0x188:0x18B] = bytes(cpuid)
    buf[0x1A0:0x1E0] = chip_id
    struct.pack_into("<Q", buf, 0x1E0, reported_tcb)  # committed TCB
    struct.pack_into("<Q", buf, 0x1F0, reported_tcb)  # launch TCB
    return bytes(buf)


def encode_signature(r: int, s: int) -> bytes:
    """The 0x2A0..0x49F tail: r and s little-endian, 72 bytes each, then reserved zeros."""
    tail = r.to_bytes(_SIG_COMPONENT, "little") + s.to_bytes(_SIG_COMPONENT, "little")
    return tail + bytes(REPORT_SIZE - SIGNED_SIZE - len(tail))
