"""The SGX extensions (OID 1.2.840.113741.1.13.1) of an Intel PCK certificate.

They carry the platform's FMSPC, PCE ID and the TCB it was certified at (16 SGX component
SVNs, the PCESVN and the CPUSVN), which TCB Info is matched against.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from veil.sdk.errors import AttestationError, AttestationFailure

__all__ = ["PckExtensions"]

_SGX_EXT = "1.2.840.113741.1.13.1"
_TCB = _SGX_EXT + ".2"
_PCEID = _SGX_EXT + ".3"
_FMSPC = _SGX_EXT + ".4"
_SGX_TYPE = _SGX_EXT + ".5"
_PCESVN = _TCB + ".17"
_CPUSVN = _TCB + ".18"


def _bad(message: str) -> AttestationError:
    return AttestationError(AttestationFailure.MALFORMED, f"PCK certificate: {message}")


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """Read one DER TLV at ``pos``; return (tag, value, next position)."""
    if pos + 2 > len(data):
        raise _bad("SGX extension is truncated")
    tag = data[pos]
    first = data[pos + 1]
    pos += 2
    if first & 0x80:
        n = first & 0x7F
        if n == 0 or n > 3 or pos + n > len(data):
            raise _bad("SGX extension has a bad DER length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    else:
        length = first
    if pos + length > len(data):
        raise _bad("SGX extension is truncated")
    return tag, data[pos : pos + length], pos + length


def _children(data: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        tag, value, pos = _tlv(data, pos)
        out.append((tag, value))
    return out


def _oid(value: bytes) -> str:
    if not value:
        raise _bad("empty OID in SGX extension")
    parts = [value[0] // 40, value[0] % 40]
    acc = 0
    for b in value[1:]:
        acc = (acc << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(acc)
            acc = 0
    return ".".join(str(p) for p in parts)


def _pairs(seq_value: bytes) -> dict[str, tuple[int, bytes]]:
    """Parse SEQUENCE OF SEQUENCE { OID, value } into {oid: (tag, value)}."""
    out: dict[str, tuple[int, bytes]] = {}
    for tag, item in _children(seq_value):
        if tag != 0x30:
            raise _bad("SGX extension entry is not a SEQUENCE")
        kids = _children(item)
        if len(kids) != 2 or kids[0][0] != 0x06:
            raise _bad("SGX extension entry is not (OID, value)")
        out[_oid(kids[0][1])] = kids[1]
    return out


@dataclass(frozen=True)
class PckExtensions:
    """What a PCK certificate certifies about the platform."""

    fmspc: bytes
    pce_id: bytes
    sgx_tcb_components: tuple[int, ...]
    pce_svn: int
    cpu_svn: bytes
    sgx_type: int | None

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> PckExtensions:
        try:
            ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(_SGX_EXT))
        except x509.ExtensionNotFound as exc:
            raise _bad(f"no SGX extension ({_SGX_EXT}) in the leaf certificate") from exc
        value = ext.value
        if not isinstance(value, x509.UnrecognizedExtension):
            raise _bad("SGX extension was not left raw by the X.509 parser")
        tag, body, end = _tlv(value.value, 0)
        if tag != 0x30 or end != len(value.value):
            raise _bad("SGX extension is not one DER SEQUENCE")
        top = _pairs(body)
        for oid, name in ((_TCB, "TCB"), (_PCEID, "PCE-ID"), (_FMSPC, "FMSPC")):
            if oid not in top:
                raise _bad(f"SGX extension has no {name} ({oid})")
        tcb_tag, tcb_value = top[_TCB]
        if tcb_tag != 0x30:
            raise _bad("SGX TCB is not a SEQUENCE")
        tcb = _pairs(tcb_value)
        comps: list[int] = []
        for i in range(1, 17):
            oid = f"{_TCB}.{i}"
            if oid not in tcb or tcb[oid][0] != 0x02:
                raise _bad(f"SGX TCB has no INTEGER component {i}")
            comps.append(int.from_bytes(tcb[oid][1], "big", signed=True))
        if _PCESVN not in tcb or tcb[_PCESVN][0] != 0x02:
            raise _bad("SGX TCB has no INTEGER PCESVN")
        if _CPUSVN not in tcb or tcb[_CPUSVN][0] != 0x04:
            raise _bad("SGX TCB has no OCTET STRING CPUSVN")
        fmspc = top[_FMSPC][1]
        pce_id = top[_PCEID][1]
        if len(fmspc) != 6 or len(pce_id) != 2:
            raise _bad(f"FMSPC is {len(fmspc)} bytes and PCE-ID {len(pce_id)}, expected 6 and 2")
        sgx_type = int.from_bytes(top[_SGX_TYPE][1], "big") if _SGX_TYPE in top else None
        return cls(
            fmspc=fmspc,
            pce_id=pce_id,
            sgx_tcb_components=tuple(comps),
            pce_svn=int.from_bytes(tcb[_PCESVN][1], "big", signed=True),
            cpu_svn=tcb[_CPUSVN][1],
            sgx_type=sgx_type,
        )
