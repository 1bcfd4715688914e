"""Evidence and sealing keys from ``/dev/sev-guest`` (Linux's SEV-SNP guest driver ioctls).

Layouts from ``include/uapi/linux/sev-guest.h``::

    struct snp_report_req        { u8 user_data[64]; u32 vmpl; u8 rsvd[28]; }        96 bytes
    struct snp_ext_report_req    { struct snp_report_req data; u64 certs_address;
                                   u32 certs_len; }                        112 bytes (padded)
    struct snp_derived_key_req   { u32 root_key_select; u32 rsvd; u64 guest_field_select;
                                   u32 vmpl; u32 guest_svn; u64 tcb_version; }    32 bytes
    struct snp_guest_request_ioctl { u8 msg_version; u64 req_data; u64 resp_data;
                                   union { u64 exitinfo2; struct { u32 fw_error;
                                   u32 vmm_error; }; }; }                        32 bytes
    SNP_GET_REPORT      = _IOWR('S', 0x0, struct snp_guest_request_ioctl)
    SNP_GET_DERIVED_KEY = _IOWR('S', 0x1, struct snp_guest_request_ioctl)
    SNP_GET_EXT_REPORT  = _IOWR('S', 0x2, struct snp_guest_request_ioctl)

Responses (SEV-SNP firmware ABI): MSG_REPORT_RSP is ``status u32, report_size u32, rsvd[24],
report`` in a 4000-byte buffer; MSG_KEY_RSP is ``status u32, rsvd[28], key[32]`` (64 bytes).
When the certificate buffer is too small the ioctl fails with ``vmm_error`` 1
(SNP_GUEST_VMM_ERR_INVALID_LEN) and ``certs_len`` holds the size needed: retry with that.

The struct packing is tested against recorded bytes; the ioctls never ran on real hardware here.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from veil.enclave.tee._base import RawEvidence
from veil.enclave.tee._configfs import SnpCertTable, TsmError

__all__ = [
    "DERIVED_KEY_FIELDS",
    "SNP_GET_DERIVED_KEY",
    "SNP_GET_EXT_REPORT",
    "SNP_GET_REPORT",
    "GuestRequest",
    "SevGuestDevice",
    "pack_derived_key_req",
    "pack_ext_report_req",
    "pack_report_req",
    "unpack_derived_key_resp",
    "unpack_report_resp",
]

_IOC_WRITE, _IOC_READ = 1, 2


def _iowr(kind: str, nr: int, size: int) -> int:
    return ((_IOC_READ | _IOC_WRITE) << 30) | (size << 16) | (ord(kind) << 8) | nr


_GUEST_REQUEST = struct.Struct("<B7xQQQ")  # msg_version, req_data, resp_data, exitinfo2
SNP_GET_REPORT = _iowr("S", 0x0, _GUEST_REQUEST.size)
SNP_GET_DERIVED_KEY = _iowr("S", 0x1, _GUEST_REQUEST.size)
SNP_GET_EXT_REPORT = _iowr("S", 0x2, _GUEST_REQUEST.size)

_REPORT_REQ = struct.Struct("<64sI28x")
_EXT_REPORT_REQ = struct.Struct("<96sQI4x")
_DERIVED_KEY_REQ = struct.Struct("<IIQIIQ")
_REPORT_RESP_SIZE = 4000
_KEY_RESP_SIZE = 64
_REPORT_RESP_HEADER = struct.Struct("<II24x")
SNP_REPORT_SIZE = 1184
VMM_ERR_INVALID_LEN = 1
PAGE = 4096

# guest_field_select bits (SEV-SNP ABI, MSG_KEY_REQ): what the derived key is bound to.
FIELD_GUEST_POLICY = 1 << 0
FIELD_IMAGE_ID = 1 << 1
FIELD_FAMILY_ID = 1 << 2
FIELD_MEASUREMENT = 1 << 3
FIELD_GUEST_SVN = 1 << 4
FIELD_TCB_VERSION = 1 << 5
DERIVED_KEY_FIELDS = FIELD_GUEST_POLICY | FIELD_MEASUREMENT


@dataclass(frozen=True)
class GuestRequest:
    """``struct snp_guest_request_ioctl``."""

    msg_version: int
    req_data: int
    resp_data: int
    exitinfo2: int = 0

    def pack(self) -> bytes:
        return _GUEST_REQUEST.pack(self.msg_version, self.req_data, self.resp_data, self.exitinfo2)

    @classmethod
    def unpack(cls, raw: bytes) -> GuestRequest:
        return cls(*_GUEST_REQUEST.unpack(raw))

    @property
    def fw_error(self) -> int:
        return self.exitinfo2 & 0xFFFFFFFF

    @property
    def vmm_error(self) -> int:
        return self.exitinfo2 >> 32


def pack_report_req(user_data: bytes, vmpl: int) -> bytes:
    if len(user_data) != 64:
        raise ValueError(f"user_data must be 64 bytes, got {len(user_data)}")
    return _REPORT_REQ.pack(user_data, vmpl)


def pack_ext_report_req(user_data: bytes, vmpl: int, certs_address: int, certs_len: int) -> bytes:
    return _EXT_REPORT_REQ.pack(pack_report_req(user_data, vmpl), certs_address, certs_len)


def unpack_ext_report_certs_len(raw: bytes) -> int:
    """``certs_len`` as the kernel left it (the size it needs after an INVALID_LEN failure)."""
    return int(_EXT_REPORT_REQ.unpack(raw)[2])


def pack_derived_key_req(
    *, root_key_select: int, guest_field_select: int, vmpl: int, guest_svn: int, tcb_version: int
) -> bytes:
    return _DERIVED_KEY_REQ.pack(
        root_key_select, 0, guest_field_select, vmpl, guest_svn, tcb_version
    )


def _firmware_status(status: int, what: str) -> None:
    if status != 0:
        raise TsmError(f"SEV-SNP firmware rejected {what}: status {status:#x}")


def unpack_report_resp(raw: bytes) -> bytes:
    """The ATTESTATION_REPORT inside a MSG_REPORT_RSP buffer."""
    if len(raw) < _REPORT_RESP_HEADER.size + SNP_REPORT_SIZE:
        raise TsmError(f"report response is {len(raw)} bytes, too short")
    status, size = _REPORT_RESP_HEADER.unpack_from(raw)
    _firmware_status(status, "MSG_REPORT_REQ")
    if size != SNP_REPORT_SIZE:
        raise TsmError(f"report_size is {size}, expected {SNP_REPORT_SIZE}")
    start = _REPORT_RESP_HEADER.size
    return raw[start : start + size]


def unpack_derived_key_resp(raw: bytes) -> bytes:
    """The 32-byte key inside a MSG_KEY_RSP buffer."""
    if len(raw) != _KEY_RESP_SIZE:
        raise TsmError(f"key response is {len(raw)} bytes, expected {_KEY_RESP_SIZE}")
    _firmware_status(struct.unpack_from("<I", raw)[0], "MSG_KEY_REQ")
    return raw[32:64]


Ioctl = Callable[[int, int, bytearray], int]


def _os_ioctl(fd: int, request: int, arg: bytearray) -> int:
    return int(fcntl.ioctl(fd, request, arg, True))


class SevGuestDevice:
    """SNP evidence via SNP_GET_EXT_REPORT and sealing keys via SNP_GET_DERIVED_KEY."""

    name = "sev-guest"
    tee = "sev-snp"

    def __init__(
        self,
        device: Path = Path("/dev/sev-guest"),
        *,
        vmpl: int = 0,
        msg_version: int = 1,
        ioctl: Ioctl = _os_ioctl,
        opener: Callable[[Path], int] = lambda p: os.open(p, os.O_RDWR),
    ) -> None:
        self._device = device
        self._vmpl = vmpl
        self._msg_version = msg_version
        self._ioctl = ioctl
        self._open = opener

    def _call(
        self, request: int, req: ctypes.Array[ctypes.c_char], resp_size: int
    ) -> tuple[bytes, GuestRequest]:
        resp = ctypes.create_string_buffer(resp_size)
        guest = bytearray(
            GuestRequest(self._msg_version, ctypes.addressof(req), ctypes.addressof(resp)).pack()
        )
        fd = self._open(self._device)
        try:
            try:
                self._ioctl(fd, request, guest)
                error: OSError | None = None
            except OSError as exc:
                error = exc
        finally:
            os.close(fd)
        result = GuestRequest.unpack(bytes(guest))
        if error is not None:
            raise _IoctlFailed(error, result)
        return resp.raw, result

    def evidence(self, report_data: bytes, measurement: bytes) -> RawEvidence:
        """SNP_GET_EXT_REPORT: the report plus the host-provided certificate table."""
        certs_len = 4 * PAGE
        for _ in range(3):
            certs = ctypes.create_string_buffer(certs_len)
            req = ctypes.create_string_buffer(
                pack_ext_report_req(report_data, self._vmpl, ctypes.addressof(certs), certs_len),
                _EXT_REPORT_REQ.size,
            )
            try:
                resp, _ = self._call(SNP_GET_EXT_REPORT, req, _REPORT_RESP_SIZE)
            except _IoctlFailed as failed:
                if failed.request.vmm_error == VMM_ERR_INVALID_LEN:
                    needed = unpack_ext_report_certs_len(req.raw)
                    certs_len = max(-(-needed // PAGE) * PAGE, certs_len + PAGE)
                    continue
                raise failed.as_tsm_error("SNP_GET_EXT_REPORT") from failed.error
            report = unpack_report_resp(resp)
            table = certs.raw
            chain = SnpCertTable.from_bytes(table).chain_der() if any(table[:24]) else ()
            return RawEvidence(tee="sev-snp", report=report, cert_chain=chain)
        raise TsmError("SNP_GET_EXT_REPORT: certificate buffer size never settled")

    def derived_key(self, *, field_select: int = DERIVED_KEY_FIELDS) -> bytes:
        """MSG_KEY_REQ: a key from the VCEK root, bound to the guest's measurement and policy."""
        req = ctypes.create_string_buffer(
            pack_derived_key_req(
                root_key_select=0,
                guest_field_select=field_select,
                vmpl=self._vmpl,
                guest_svn=0,
                tcb_version=0,
            ),
            _DERIVED_KEY_REQ.size,
        )
        try:
            resp, _ = self._call(SNP_GET_DERIVED_KEY, req, _KEY_RESP_SIZE)
        except _IoctlFailed as failed:
            raise failed.as_tsm_error("SNP_GET_DERIVED_KEY") from failed.error
        return unpack_derived_key_resp(resp)

    def sealing_key(self, label: bytes) -> bytes:
        """HMAC-SHA256 under the MSG_KEY_REQ key: only this guest image on this chip has it."""
        return hmac.new(self.derived_key(), b"veil/sealing/v1\0" + label, hashlib.sha256).digest()


class _IoctlFailed(Exception):
    def __init__(self, error: OSError, request: GuestRequest) -> None:
        super().__init__(str(error))
        self.error = error
        self.request = request

    def as_tsm_error(self, what: str) -> TsmError:
        name = errno.errorcode.get(self.error.errno or 0, str(self.error.errno))
        return TsmError(
            f"{what} failed: {name} (fw_error {self.request.fw_error:#x}, "
            f"vmm_error {self.request.vmm_error:#x})"
        )
