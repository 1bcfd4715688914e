"""The few DER primitives AMD's VCEK extensions use (INTEGER, IA5String, OCTET STRING)."""

from __future__ import annotations

from veil.sdk.errors import AttestationError, AttestationFailure

__all__ = ["decode_ia5", "decode_integer", "decode_octets", "encode_ia5", "encode_integer"]


def _tlv(data: bytes, tag: int, what: str) -> bytes:
    if len(data) < 2 or data[0] != tag:
        raise AttestationError(AttestationFailure.MALFORMED, f"VCEK extension {what} is not DER")
    length = data[1]
    offset = 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 2 or len(data) < 2 + n:
            raise AttestationError(AttestationFailure.MALFORMED, f"VCEK extension {what}: length")
        length = int.from_bytes(data[2 : 2 + n], "big")
        offset = 2 + n
    if len(data) != offset + length:
        raise AttestationError(AttestationFailure.MALFORMED, f"VCEK extension {what}: length")
    return data[offset:]


def decode_integer(data: bytes, what: str) -> int:
    body = _tlv(data, 0x02, what)
    if not body:
        raise AttestationError(AttestationFailure.MALFORMED, f"VCEK extension {what}: empty")
    return int.from_bytes(body, "big", signed=True)


def decode_ia5(data: bytes, what: str) -> str:
    return _tlv(data, 0x16, what).decode("ascii", errors="replace")


def decode_octets(data: bytes, what: str, expected_len: int) -> bytes:
    """hwID is stored as raw bytes by AMD's KDS; tolerate an OCTET STRING wrapper too."""
    if len(data) == expected_len:
        return data
    return _tlv(data, 0x04, what)


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def encode_integer(value: int) -> bytes:
    body = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)
    return b"\x02" + _length(len(body)) + body


def encode_ia5(value: str) -> bytes:
    body = value.encode("ascii")
    return b"\x16" + _length(len(body)) + body
