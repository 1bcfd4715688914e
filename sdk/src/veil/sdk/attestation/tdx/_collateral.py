"""Intel PCS collateral for TDX: TCB Info, QE Identity, CRLs and issuer chains.

``TdxCollateral.from_dir`` recognises every file by its content, never by its name: JSON with a
``tcbInfo`` or ``enclaveIdentity`` object, certificates in PEM or URL-encoded PEM (the PCS
``*-Issuer-Chain`` header), CRLs in DER, PEM or hex. Anything else (quotes, notes) is ignored
and listed in ``ignored``.

Signed JSON is verified over the EXACT bytes of the inner object as it appears in the file; if
that fails (pretty-printed copies), over its compact re-serialisation.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from veil.sdk.attestation.tdx._x509 import load_certificates, load_crl, verify_chain
from veil.sdk.errors import AttestationError, AttestationFailure

__all__ = [
    "QeIdentity",
    "QeTcbLevel",
    "TcbInfo",
    "TcbLevel",
    "TcbStatus",
    "TdxCollateral",
    "TdxModuleIdentity",
]


class TcbStatus(enum.Enum):
    """Intel's TCB statuses, as spelled in TCB Info and QE Identity."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"


def _status(value: Any, what: str) -> TcbStatus:
    try:
        return TcbStatus(value)
    except ValueError as exc:
        raise _bad(f"{what} '{value}' is not a known TCB status") from exc


def _bad(message: str) -> AttestationError:
    return AttestationError(AttestationFailure.MALFORMED, message)


def _date(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise _bad(f"{what} is not a date string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _bad(f"{what} '{value}' is not an ISO-8601 date") from exc
    if parsed.tzinfo is None:
        raise _bad(f"{what} '{value}' has no time zone")
    return parsed


def _hex(value: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise _bad(f"{what} is not a hex string")
    try:
        out = bytes.fromhex(value)
    except ValueError as exc:
        raise _bad(f"{what} is not hex") from exc
    if size is not None and len(out) != size:
        raise _bad(f"{what} is {len(out)} bytes, expected {size}")
    return out


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"{what} is not an integer")
    return value


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"{what} is not a string")
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{what} is not a JSON object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(f"{what} is not a JSON array")
    return value


def _raw_member(text: str, key: str) -> str | None:
    """The exact text of the object value of top-level member ``key`` (string-aware matching)."""
    marker = f'"{key}"'
    start = text.find(marker)
    if start < 0:
        return None
    brace = text.find("{", start + len(marker))
    if brace < 0 or text[start + len(marker) : brace].strip() != ":":
        return None
    depth = 0
    in_str = False
    escaped = False
    for i in range(brace, len(text)):
        c = text[i]
        if in_str:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[brace : i + 1]
    return None


@dataclass(frozen=True)
class _SignedJson:
    """An inner object, the candidate byte strings its signature may cover, and the signature."""

    key: str
    body: dict[str, Any]
    signed_candidates: tuple[bytes, ...]
    signature: bytes

    @classmethod
    def parse(cls, raw: bytes, key: str, what: str) -> _SignedJson:
        try:
            text = raw.decode("utf-8")
            doc = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise _bad(f"{what} is not JSON ({exc.__class__.__name__})") from exc
        doc = _obj(doc, what)
        body = _obj(doc.get(key), f"{what} '{key}'")
        signature = _hex(doc.get("signature"), f"{what} signature", 64)
        candidates: list[bytes] = []
        exact = _raw_member(text, key)
        if exact is not None:
            candidates.append(exact.encode("utf-8"))
        compact = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if compact not in candidates:
            candidates.append(compact)
        return cls(key, body, tuple(candidates), signature)

    def verify(
        self,
        certificates: Iterable[x509.Certificate],
        roots: list[x509.Certificate],
        now: datetime,
        what: str,
    ) -> tuple[x509.Certificate, ...]:
        """Find the signer among ``certificates``, check its chain to ``roots``; return the path."""
        pool = list(certificates)
        r = int.from_bytes(self.signature[:32], "big")
        s = int.from_bytes(self.signature[32:], "big")
        der_sig = encode_dss_signature(r, s)
        for cert in pool:
            key = cert.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                continue
            for candidate in self.signed_candidates:
                try:
                    key.verify(der_sig, candidate, ec.ECDSA(hashes.SHA256()))
                except InvalidSignature:
                    continue
                return verify_chain(cert, pool, roots, now, what)
        if not any(isinstance(c.public_key(), ec.EllipticCurvePublicKey) for c in pool):
            raise AttestationError(
                AttestationFailure.BAD_CHAIN, f"{what}: no signing certificate in the collateral"
            )
        raise AttestationError(
            AttestationFailure.BAD_SIGNATURE,
            f"{what}: signature does not verify under any certificate in the collateral",
        )


@dataclass(frozen=True)
class TcbLevel:
    """One TDX TCB level of a TCB Info (v3)."""

    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...]
    tcb_date: datetime
    status: TcbStatus
    advisory_ids: tuple[str, ...]

    @classmethod
    def from_obj(cls, obj: Any, what: str) -> TcbLevel:
        obj = _obj(obj, what)
        tcb = _obj(obj.get("tcb"), f"{what} tcb")

        def comps(name: str) -> tuple[int, ...]:
            items = _list(tcb.get(name), f"{what} {name}")
            if len(items) != 16:
                raise _bad(f"{what} {name} has {len(items)} entries, expected 16")
            # Component SVNs are bytes; Intel's QVL reads them as uint8 (its own sample data
            # spells 0xC1 as 65473), so only the low byte is compared, as there.
            return tuple(_int(_obj(c, name).get("svn"), f"{what} {name} svn") & 0xFF for c in items)

        return cls(
            sgx_components=comps("sgxtcbcomponents"),
            pce_svn=_int(tcb.get("pcesvn"), f"{what} pcesvn"),
            tdx_components=comps("tdxtcbcomponents"),
            tcb_date=_date(obj.get("tcbDate"), f"{what} tcbDate"),
            status=_status(obj.get("tcbStatus"), f"{what} tcbStatus"),
            advisory_ids=tuple(
                _str(a, "advisory id") for a in _list(obj.get("advisoryIDs", []), "advisoryIDs")
            ),
        )


@dataclass(frozen=True)
class TdxModuleIdentity:
    """A TDX module identity (``TDX_<major>``) with its own TCB levels (by ISVSVN)."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[tuple[int, TcbStatus, tuple[str, ...]], ...]

    @classmethod
    def from_obj(cls, obj: Any, what: str) -> TdxModuleIdentity:
        obj = _obj(obj, what)
        levels = []
        for i, lv in enumerate(_list(obj.get("tcbLevels"), f"{what} tcbLevels")):
            lv = _obj(lv, f"{what} level {i}")
            levels.append(
                (
                    _int(_obj(lv.get("tcb"), "tcb").get("isvsvn"), f"{what} isvsvn"),
                    _status(lv.get("tcbStatus"), f"{what} tcbStatus"),
                    tuple(_str(a, "advisory id") for a in _list(lv.get("advisoryIDs", []), "ids")),
                )
            )
        return cls(
            id=_str(obj.get("id"), f"{what} id"),
            mrsigner=_hex(obj.get("mrsigner"), f"{what} mrsigner", 48),
            attributes=_hex(obj.get("attributes"), f"{what} attributes", 8),
            attributes_mask=_hex(obj.get("attributesMask"), f"{what} attributesMask", 8),
            tcb_levels=tuple(levels),
        )


@dataclass(frozen=True)
class TcbInfo:
    """A parsed (signature not yet checked) Intel TCB Info for one FMSPC."""

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_evaluation_data_number: int
    module_mrsigner: bytes | None
    module_attributes: bytes | None
    module_attributes_mask: bytes | None
    module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]
    signed: _SignedJson = field(repr=False)

    @classmethod
    def from_json(cls, raw: bytes) -> TcbInfo:
        signed = _SignedJson.parse(raw, "tcbInfo", "TCB Info")
        b = signed.body
        ident = _str(b.get("id"), "TCB Info id")
        version = _int(b.get("version"), "TCB Info version")
        if ident != "TDX" or version != 3:
            raise AttestationError(
                AttestationFailure.UNSUPPORTED,
                f"TCB Info is id '{ident}' version {version}, expected TDX version 3",
            )
        module = b.get("tdxModule")
        mod = _obj(module, "TCB Info tdxModule") if module is not None else None
        return cls(
            id=ident,
            version=version,
            issue_date=_date(b.get("issueDate"), "TCB Info issueDate"),
            next_update=_date(b.get("nextUpdate"), "TCB Info nextUpdate"),
            fmspc=_hex(b.get("fmspc"), "TCB Info fmspc", 6),
            pce_id=_hex(b.get("pceId"), "TCB Info pceId", 2),
            tcb_evaluation_data_number=_int(
                b.get("tcbEvaluationDataNumber"), "TCB Info tcbEvaluationDataNumber"
            ),
            module_mrsigner=_hex(mod.get("mrsigner"), "tdxModule mrsigner", 48) if mod else None,
            module_attributes=_hex(mod.get("attributes"), "tdxModule attributes", 8)
            if mod
            else None,
            module_attributes_mask=_hex(mod.get("attributesMask"), "tdxModule mask", 8)
            if mod
            else None,
            module_identities=tuple(
                TdxModuleIdentity.from_obj(m, f"tdxModuleIdentities[{i}]")
                for i, m in enumerate(_list(b.get("tdxModuleIdentities", []), "identities"))
            ),
            tcb_levels=tuple(
                TcbLevel.from_obj(lv, f"TCB Info tcbLevels[{i}]")
                for i, lv in enumerate(_list(b.get("tcbLevels"), "TCB Info tcbLevels"))
            ),
            signed=signed,
        )


@dataclass(frozen=True)
class QeTcbLevel:
    isv_svn: int
    status: TcbStatus
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class QeIdentity:
    """A parsed (signature not yet checked) Intel QE Identity (``TD_QE``)."""

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isv_prod_id: int
    tcb_levels: tuple[QeTcbLevel, ...]
    signed: _SignedJson = field(repr=False)

    @classmethod
    def from_json(cls, raw: bytes) -> QeIdentity:
        signed = _SignedJson.parse(raw, "enclaveIdentity", "QE Identity")
        b = signed.body
        ident = _str(b.get("id"), "QE Identity id")
        if ident != "TD_QE":
            raise AttestationError(
                AttestationFailure.UNSUPPORTED, f"QE Identity id is '{ident}', expected TD_QE"
            )
        levels = []
        for i, lv in enumerate(_list(b.get("tcbLevels"), "QE Identity tcbLevels")):
            lv = _obj(lv, f"QE Identity tcbLevels[{i}]")
            levels.append(
                QeTcbLevel(
                    isv_svn=_int(_obj(lv.get("tcb"), "tcb").get("isvsvn"), "QE isvsvn"),
                    status=_status(lv.get("tcbStatus"), "QE tcbStatus"),
                    advisory_ids=tuple(
                        _str(a, "advisory id") for a in _list(lv.get("advisoryIDs", []), "ids")
                    ),
                )
            )
        return cls(
            id=ident,
            version=_int(b.get("version"), "QE Identity version"),
            issue_date=_date(b.get("issueDate"), "QE Identity issueDate"),
            next_update=_date(b.get("nextUpdate"), "QE Identity nextUpdate"),
            tcb_evaluation_data_number=_int(
                b.get("tcbEvaluationDataNumber"), "QE Identity tcbEvaluationDataNumber"
            ),
            miscselect=_hex(b.get("miscselect"), "miscselect", 4),
            miscselect_mask=_hex(b.get("miscselectMask"), "miscselectMask", 4),
            attributes=_hex(b.get("attributes"), "QE attributes", 16),
            attributes_mask=_hex(b.get("attributesMask"), "QE attributesMask", 16),
            mrsigner=_hex(b.get("mrsigner"), "QE mrsigner", 32),
            isv_prod_id=_int(b.get("isvprodid"), "QE isvprodid"),
            tcb_levels=tuple(levels),
            signed=signed,
        )


@dataclass(frozen=True)
class TdxCollateral:
    """Everything fetched from Intel PCS that a quote is checked against (unverified)."""

    tcb_infos: tuple[TcbInfo, ...] = ()
    qe_identities: tuple[QeIdentity, ...] = ()
    crls: tuple[x509.CertificateRevocationList, ...] = ()
    certificates: tuple[x509.Certificate, ...] = ()
    ignored: tuple[str, ...] = ()

    @classmethod
    def from_files(cls, files: Iterable[tuple[str, bytes]]) -> TdxCollateral:
        """Recognise each ``(name, content)`` by its content; the name is only for messages."""
        tcb: list[TcbInfo] = []
        qe: list[QeIdentity] = []
        crls: list[x509.CertificateRevocationList] = []
        certs: list[x509.Certificate] = []
        ignored: list[str] = []
        for name, data in files:
            head = data.lstrip()[:64]
            if head.startswith(b"{"):
                try:
                    doc = json.loads(data)
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                    ignored.append(name)
                    continue
                if isinstance(doc, dict) and "tcbInfo" in doc:
                    try:
                        tcb.append(TcbInfo.from_json(data))
                    except AttestationError as exc:
                        if exc.reason is not AttestationFailure.UNSUPPORTED:
                            raise
                        ignored.append(name)
                elif isinstance(doc, dict) and "enclaveIdentity" in doc:
                    try:
                        qe.append(QeIdentity.from_json(data))
                    except AttestationError as exc:
                        if exc.reason is not AttestationFailure.UNSUPPORTED:
                            raise
                        ignored.append(name)
                else:
                    ignored.append(name)
            elif head.startswith((b"-----BEGIN CERTIFICATE", b"-----BEGIN%20CERTIFICATE")):
                certs.extend(load_certificates(data, name))
            elif head.startswith(b"-----BEGIN X509 CRL"):
                crls.append(load_crl(data, name))
            elif head[:1] == b"\x30":
                try:
                    crls.append(x509.load_der_x509_crl(data))
                except ValueError:
                    try:
                        certs.append(x509.load_der_x509_certificate(data))
                    except ValueError:
                        ignored.append(name)
            elif head and all(c in b"0123456789abcdefABCDEF" for c in data.strip()):
                try:
                    crls.append(load_crl(data, name))
                except AttestationError:
                    ignored.append(name)
            else:
                ignored.append(name)
        unique: list[x509.Certificate] = []
        for c in certs:
            if c not in unique:
                unique.append(c)
        return cls(tuple(tcb), tuple(qe), tuple(crls), tuple(unique), tuple(ignored))

    @classmethod
    def from_dir(cls, path: str | Path) -> TdxCollateral:
        """Load every regular file of a folder of PCS responses (any names, any layout)."""
        folder = Path(path)
        if not folder.is_dir():
            raise AttestationError(
                AttestationFailure.MALFORMED, f"collateral folder {folder} does not exist"
            )
        return cls.from_files(
            (p.name, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()
        )

    def merged(self, other: TdxCollateral) -> TdxCollateral:
        """Collateral from two sources (e.g. a TCB Info here, its issuer chain there)."""
        certs = list(self.certificates)
        certs.extend(c for c in other.certificates if c not in certs)
        return TdxCollateral(
            self.tcb_infos + other.tcb_infos,
            self.qe_identities + other.qe_identities,
            self.crls + other.crls,
            tuple(certs),
            self.ignored + other.ignored,
        )
