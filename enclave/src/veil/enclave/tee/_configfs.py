"""Evidence from Linux configfs-tsm (``/sys/kernel/config/tsm/report``, Linux 6.7+).

The kernel's one interface for SEV-SNP and TDX guests (Documentation/ABI/testing/configfs-tsm):

1. ``mkdir report/<entry>`` creates a request; the kernel fills it with attribute files;
2. write ``inblob`` (the 64 bytes of REPORT_DATA) and, for SNP, optionally ``privlevel`` (VMPL);
3. read ``generation`` — every write bumps it;
4. read ``outblob`` (SNP: the 1184-byte ATTESTATION_REPORT; TDX: the DCAP quote) and, for SNP,
   ``auxblob`` (the GHCB certificate table: VCEK, ASK, ARK as the host installed them);
5. read ``generation`` again: if another process wrote to the entry in between, the blobs may
   answer *its* inblob, so the request is retried;
6. ``rmdir`` the entry.

``provider`` names the guest driver: ``sev_guest`` or ``tdx_guest``. There is no key derivation
interface in configfs-tsm, so this provider derives sealing keys only from an explicit key
(``--sealing-key-file``, or SNP MSG_KEY_REQ through ``/dev/sev-guest`` when that is present).

All file access goes through ``TsmFilesystem`` so tests can run the real protocol against a fake
configfs tree in a temporary folder. Never exercised on real hardware in this project.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from veil.enclave.tee._base import RawEvidence
from veil.sdk.errors import ConfigError, VeilError

__all__ = [
    "CONFIGFS_TSM_REPORT",
    "SNP_CERT_GUIDS",
    "ConfigfsTsm",
    "OsTsmFilesystem",
    "SnpCertTable",
    "TsmFilesystem",
    "TsmError",
    "encode_cert_table",
]

CONFIGFS_TSM_REPORT = Path("sys/kernel/config/tsm/report")
PROVIDER_TEE = {"sev_guest": "sev-snp", "tdx_guest": "tdx"}

# GHCB spec, "SNP Extended Guest Request": certificate table GUIDs (RFC 4122 byte order).
GUID_ARK = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
GUID_ASK = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
GUID_VCEK = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
GUID_VLEK = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
SNP_CERT_GUIDS = {"ark": GUID_ARK, "ask": GUID_ASK, "vcek": GUID_VCEK, "vlek": GUID_VLEK}
_ENTRY = struct.Struct("<16sII")


class TsmError(VeilError):
    """The guest's attestation interface failed (kernel error, race that never settled)."""


@dataclass(frozen=True)
class SnpCertTable:
    """The GHCB certificate table (``auxblob`` / SNP_GET_EXT_REPORT's certificate buffer)."""

    entries: tuple[tuple[uuid.UUID, bytes], ...]

    @classmethod
    def from_bytes(cls, raw: bytes) -> SnpCertTable:
        """Parse entries ``(GUID, offset u32, length u32)`` up to the all-zero terminator."""
        entries: list[tuple[uuid.UUID, bytes]] = []
        pos = 0
        while True:
            if pos + _ENTRY.size > len(raw):
                raise TsmError(f"certificate table is {len(raw)} bytes and has no terminator entry")
            guid, offset, length = _ENTRY.unpack_from(raw, pos)
            pos += _ENTRY.size
            if guid == bytes(16) and offset == 0 and length == 0:
                break
            if offset < pos or offset + length > len(raw):
                raise TsmError(
                    f"certificate table entry {uuid.UUID(bytes=guid)} points at "
                    f"{offset}..{offset + length}, outside the {len(raw)}-byte table"
                )
            entries.append((uuid.UUID(bytes=guid), raw[offset : offset + length]))
        return cls(entries=tuple(entries))

    def get(self, guid: uuid.UUID) -> bytes | None:
        return next((blob for g, blob in self.entries if g == guid), None)

    def chain_der(self) -> tuple[bytes, ...]:
        """VCEK (or VLEK), ASK, ARK as DER, in that order; whatever of them is present."""
        out = []
        for guid in (GUID_VCEK, GUID_VLEK, GUID_ASK, GUID_ARK):
            blob = self.get(guid)
            if blob:
                out.append(_to_der(blob.rstrip(b"\0") if blob.startswith(b"-----") else blob))
        return tuple(out)


def _to_der(blob: bytes) -> bytes:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # every AMD VCEK has serial number 0
            if blob.startswith(b"-----BEGIN"):
                cert = x509.load_pem_x509_certificate(blob)
            else:
                cert = x509.load_der_x509_certificate(blob)
    except ValueError as exc:
        raise TsmError(f"certificate table holds an unparsable certificate: {exc}") from exc
    return cert.public_bytes(serialization.Encoding.DER)


def encode_cert_table(certs: dict[uuid.UUID, bytes]) -> bytes:
    """Lay out a certificate table the way the host hands it to the guest (tests, tools)."""
    header = _ENTRY.size * (len(certs) + 1)
    table, blobs = b"", b""
    for guid, blob in certs.items():
        table += _ENTRY.pack(guid.bytes, header + len(blobs), len(blob))
        blobs += blob
    return table + _ENTRY.pack(bytes(16), 0, 0) + blobs


class TsmFilesystem(Protocol):
    """The four operations configfs-tsm needs (a fake in tests, the OS in production)."""

    def mkdir(self, path: Path) -> None: ...

    def rmdir(self, path: Path) -> None: ...

    def write(self, path: Path, data: bytes) -> None: ...

    def read(self, path: Path) -> bytes: ...


class OsTsmFilesystem:
    """configfs through the OS: one ``write()`` per attribute, as configfs requires."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def write(self, path: Path, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY)
        try:
            if os.write(fd, data) != len(data):
                raise TsmError(f"short write to {path.name}")
        finally:
            os.close(fd)

    def read(self, path: Path) -> bytes:
        return path.read_bytes()


class ConfigfsTsm:
    """A TEE provider over configfs-tsm (SEV-SNP or TDX, as the kernel's ``provider`` says)."""

    def __init__(
        self,
        report_dir: Path,
        *,
        sealing_key: Callable[[bytes], bytes],
        privlevel: int | None = None,
        fs: TsmFilesystem | None = None,
        retries: int = 5,
        entry_name: Callable[[], str] = lambda: f"veil-{secrets.token_hex(8)}",
    ) -> None:
        self._dir = report_dir
        self._fs = fs or OsTsmFilesystem()
        self._sealing_key = sealing_key
        self._privlevel = privlevel
        self._retries = retries
        self._entry_name = entry_name
        self._tee = PROVIDER_TEE[self.probe_provider(report_dir, self._fs)]

    @staticmethod
    def probe_provider(report_dir: Path, fs: TsmFilesystem | None = None) -> str:
        """Create and remove one entry to read ``provider``; raise ``ConfigError`` if unusable."""
        fs = fs or OsTsmFilesystem()
        entry = report_dir / f"veil-probe-{secrets.token_hex(4)}"
        try:
            fs.mkdir(entry)
        except OSError as exc:
            raise ConfigError(
                f"configfs-tsm at {report_dir} is not usable: {exc.strerror or exc}"
            ) from exc
        try:
            provider = fs.read(entry / "provider").decode(errors="replace").strip()
        except OSError as exc:
            raise ConfigError(f"configfs-tsm entry has no readable provider: {exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                fs.rmdir(entry)
        if provider not in PROVIDER_TEE:
            raise ConfigError(
                f"configfs-tsm provider {provider!r} is not supported "
                f"(expected {' or '.join(PROVIDER_TEE)})"
            )
        return provider

    @property
    def name(self) -> str:
        return f"configfs-tsm/{self._tee}"

    @property
    def tee(self) -> str:
        return self._tee

    def evidence(self, report_data: bytes, measurement: bytes) -> RawEvidence:
        """A fresh report over ``report_data``; ``measurement`` is ignored (hardware measures)."""
        if len(report_data) != 64:
            raise ValueError(f"report_data must be 64 bytes, got {len(report_data)}")
        for _ in range(self._retries):
            result = self._attempt(report_data)
            if result is not None:
                return result
        raise TsmError(
            f"configfs-tsm generation kept changing across {self._retries} attempts "
            "(another writer is using the same entry)"
        )

    def _attempt(self, report_data: bytes) -> RawEvidence | None:
        fs = self._fs
        entry = self._dir / self._entry_name()
        try:
            fs.mkdir(entry)
        except OSError as exc:
            raise TsmError(f"configfs-tsm: cannot create {entry.name}: {exc.strerror}") from exc
        try:
            if self._privlevel is not None:
                fs.write(entry / "privlevel", f"{self._privlevel}\n".encode())
            fs.write(entry / "inblob", report_data)
            before = self._generation(entry)
            outblob = fs.read(entry / "outblob")
            auxblob = fs.read(entry / "auxblob") if self._tee == "sev-snp" else b""
            if self._generation(entry) != before:
                return None
            provider = fs.read(entry / "provider").decode(errors="replace").strip()
        except OSError as exc:
            raise TsmError(
                f"configfs-tsm request failed: {exc.strerror or exc} ({exc.filename})"
            ) from exc
        finally:
            with contextlib.suppress(OSError):
                fs.rmdir(entry)
        if PROVIDER_TEE.get(provider) != self._tee:
            raise TsmError(f"configfs-tsm provider changed to {provider!r} mid-run")
        if not outblob:
            raise TsmError("configfs-tsm returned an empty outblob")
        chain: tuple[bytes, ...] = ()
        if self._tee == "sev-snp" and auxblob:
            chain = SnpCertTable.from_bytes(auxblob).chain_der()
        return RawEvidence(tee=self._tee, report=outblob, cert_chain=chain)

    def _generation(self, entry: Path) -> int:
        raw = self._fs.read(entry / "generation").strip()
        try:
            return int(raw)
        except ValueError as exc:
            raise TsmError(f"configfs-tsm generation {raw!r} is not a number") from exc

    def sealing_key(self, label: bytes) -> bytes:
        return self._sealing_key(label)
