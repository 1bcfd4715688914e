"""Parse NVIDIA GPU / NVSwitch SPDM GET_MEASUREMENTS evidence into frozen objects.

    request  (37 bytes)  version, 0xE0, param1, param2, nonce (32), slot id
    response             version, 0x60, param1, param2, number of blocks u8, record length u24,
                         measurement record (blocks: index u8, spec u8, size u16,
                         DMTF value type u8, value size u16, value), nonce (32),
                         opaque length u16, opaque data (NVIDIA TLVs: type u16, size u16,
                         value; 3 = driver version, 6 = VBIOS version, ...),
                         signature (96: raw r ‖ s, P-384)

The signature covers request ‖ response-without-signature. Nothing here checks it.
"""

from __future__ import annotations

from dataclasses import dataclass

from veil.sdk.errors import AttestationError, AttestationFailure

__all__ = ["MeasurementBlock", "SpdmEvidence"]

REQUEST_SIZE = 37
SIGNATURE_SIZE = 96
_GET_MEASUREMENTS = 0xE0
_MEASUREMENTS = 0x60
_OPAQUE_DRIVER_VERSION = 3
_OPAQUE_VBIOS_VERSION = 6
_OPAQUE_CHIP_SKU = 15
_OPAQUE_PROJECT = 17
_OPAQUE_PROJECT_SKU = 18


def _opaque_fields(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """NVIDIA opaque data: a run of (type u16, size u16, value) records."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise _bad(f"opaque data record header at {pos} runs past its {len(data)} bytes")
        kind = int.from_bytes(data[pos : pos + 2], "little")
        size = int.from_bytes(data[pos + 2 : pos + 4], "little")
        if pos + 4 + size > len(data):
            raise _bad(f"opaque data record {kind} of {size} bytes runs past the data")
        out.append((kind, data[pos + 4 : pos + 4 + size]))
        pos += 4 + size
    return tuple(out)


def _bad(message: str) -> AttestationError:
    return AttestationError(AttestationFailure.MALFORMED, f"SPDM evidence: {message}")


@dataclass(frozen=True)
class MeasurementBlock:
    """One SPDM measurement block (DMTF format)."""

    index: int
    spec: int
    value_type: int
    value: bytes


@dataclass(frozen=True)
class SpdmEvidence:
    """A parsed (not yet verified) GET_MEASUREMENTS request/response pair."""

    request: bytes
    nonce: bytes
    response_nonce: bytes
    spdm_version: int
    blocks: tuple[MeasurementBlock, ...]
    opaque_data: bytes
    opaque_fields: tuple[tuple[int, bytes], ...]
    signed_bytes: bytes
    signature: bytes

    def measurements(self) -> dict[int, bytes]:
        """Measurement values by SPDM block index."""
        return {b.index: b.value for b in self.blocks}

    def _field(self, kind: int) -> bytes | None:
        return next((v for t, v in self.opaque_fields if t == kind), None)

    @property
    def driver_version(self) -> str | None:
        """Driver version from the signed opaque data (GPUs only), e.g. ``550.90.07``."""
        return self._text(_OPAQUE_DRIVER_VERSION)

    def _text(self, kind: int) -> str | None:
        raw = self._field(kind)
        return raw.split(b"\0", 1)[0].decode("ascii", "replace") if raw is not None else None

    @property
    def rim_ids(self) -> tuple[str, ...]:
        """The ids NVIDIA's RIM service files this device's RIMs under (driver, then VBIOS).

        GPUs: ``NV_GPU_DRIVER_GH100_<driver>`` and
        ``NV_GPU_VBIOS_<project>_<project sku>_<chip sku>_<VBIOS without dots>``; NVSwitches
        carry no project fields and use ``NV_SWITCH_BIOS_5612_0002_890_<BIOS>``.
        """
        vbios = self.vbios_version
        if vbios is None:
            return ()
        bios_id = vbios.replace(".", "").upper()
        project = self._text(_OPAQUE_PROJECT)
        if project is None:
            return (f"NV_SWITCH_BIOS_5612_0002_890_{bios_id}",)
        ids = []
        if self.driver_version:
            ids.append(f"NV_GPU_DRIVER_GH100_{self.driver_version}")
        ids.append(
            f"NV_GPU_VBIOS_{project}_{self._text(_OPAQUE_PROJECT_SKU)}_"
            f"{self._text(_OPAQUE_CHIP_SKU)}_{bios_id}"
        )
        return tuple(ids)

    @property
    def vbios_version(self) -> str | None:
        """VBIOS / firmware version from the signed opaque data, e.g. ``96.00.9F.00.01``."""
        raw = self._field(_OPAQUE_VBIOS_VERSION)
        if raw is None:
            return None
        if len(raw) == 8:  # GPUs: two little-endian u32 halves
            digits = raw[:4][::-1].hex() + raw[4:][::-1].hex()[-2:]
            return ".".join(digits[i : i + 2] for i in range(0, 10, 2)).upper()
        return raw.split(b"\0", 1)[0].decode("ascii", "replace")

    @classmethod
    def from_bytes(cls, raw: bytes) -> SpdmEvidence:
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise _bad(f"evidence must be bytes, got {type(raw).__name__}")
        raw = bytes(raw)
        minimum = REQUEST_SIZE + 8 + 32 + 2 + SIGNATURE_SIZE
        if len(raw) < minimum:
            raise _bad(f"evidence is {len(raw)} bytes, at least {minimum} are needed")
        request = raw[:REQUEST_SIZE]
        if request[1] != _GET_MEASUREMENTS:
            raise _bad(f"request code is {request[1]:#x}, expected GET_MEASUREMENTS (0xe0)")
        if not request[2] & 0x01:
            raise _bad("request did not ask for a signature (param1 bit 0 clear)")
        resp = raw[REQUEST_SIZE:]
        if resp[1] != _MEASUREMENTS:
            raise _bad(f"response code is {resp[1]:#x}, expected MEASUREMENTS (0x60)")
        if resp[0] != request[0]:
            raise _bad(f"response SPDM version {resp[0]:#x} differs from request {request[0]:#x}")
        count = resp[4]
        record_len = int.from_bytes(resp[5:8], "little")
        pos = 8
        end = pos + record_len
        if end + 32 + 2 + SIGNATURE_SIZE > len(resp):
            raise _bad(
                f"response is {len(resp)} bytes, header says a measurement record of "
                f"{record_len} bytes"
            )
        blocks: list[MeasurementBlock] = []
        seen: set[int] = set()
        while pos < end:
            if pos + 7 > end:
                raise _bad(f"measurement block header at {pos} runs past the record")
            index, spec = resp[pos], resp[pos + 1]
            size = int.from_bytes(resp[pos + 2 : pos + 4], "little")
            if pos + 4 + size > end or size < 3:
                raise _bad(f"measurement block {index} of {size} bytes runs past the record")
            vtype = resp[pos + 4]
            vsize = int.from_bytes(resp[pos + 5 : pos + 7], "little")
            if vsize != size - 3:
                raise _bad(f"measurement block {index} value is {vsize} bytes, block says {size}")
            if index in seen:
                raise _bad(f"measurement index {index} appears twice")
            seen.add(index)
            blocks.append(MeasurementBlock(index, spec, vtype, resp[pos + 7 : pos + 4 + size]))
            pos += 4 + size
        if len(blocks) != count:
            raise _bad(f"response has {len(blocks)} measurement blocks, header says {count}")
        response_nonce = resp[end : end + 32]
        opaque_len = int.from_bytes(resp[end + 32 : end + 34], "little")
        opaque_end = end + 34 + opaque_len
        if opaque_end + SIGNATURE_SIZE != len(resp):
            raise _bad(
                f"response is {len(resp)} bytes, header fields need {opaque_end + SIGNATURE_SIZE}"
            )
        return cls(
            request=request,
            nonce=request[4:36],
            response_nonce=response_nonce,
            spdm_version=resp[0],
            blocks=tuple(blocks),
            opaque_data=resp[end + 34 : opaque_end],
            opaque_fields=_opaque_fields(resp[end + 34 : opaque_end]),
            signed_bytes=raw[: REQUEST_SIZE + opaque_end],
            signature=resp[opaque_end:],
        )
