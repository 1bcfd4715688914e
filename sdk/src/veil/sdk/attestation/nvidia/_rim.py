"""NVIDIA Reference Integrity Manifests (SWID tags, XML-DSig signed) and where they come from.

A RIM is verified with ``signxml`` (ECDSA-SHA384 over C14N 1.1, clock injected) under the signing
certificate it carries, whose chain must reach the pinned RIM root at ``now``. Reference values
are read only from the XML the signature covers (no signature-wrapping).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from cryptography import x509
from lxml import etree
from signxml.algorithms import DigestAlgorithm, SignatureMethod
from signxml.exceptions import InvalidInput, SignXMLException
from signxml.verifier import SignatureConfiguration, VerifyResult, XMLVerifier

from veil.sdk.attestation.nvidia._roots import nvidia_rim_root
from veil.sdk.attestation.tdx._x509 import verify_chain
from veil.sdk.errors import AttestationError, AttestationFailure, warn_insecure

__all__ = [
    "DirectoryRimStore",
    "MappingRimStore",
    "ReferenceMeasurement",
    "RimStore",
    "VerifiedRim",
    "verify_rim",
]

_DS = "{http://www.w3.org/2000/09/xmldsig#}"
_SWID = "{http://standards.iso.org/iso/19770/-2/2015/schema.xsd}"
_HASH_NS = "{http://www.w3.org/2001/04/xmlenc#sha384}"


@dataclass(frozen=True)
class ReferenceMeasurement:
    """Golden values for one measurement index (any of ``alternatives`` is accepted)."""

    index: int
    name: str
    alternatives: tuple[bytes, ...]


@dataclass(frozen=True)
class VerifiedRim:
    """A RIM whose signature and chain verified: its id, version and active golden values."""

    tag_id: str
    version: str
    product: str
    colloquial_version: str
    measurements: tuple[ReferenceMeasurement, ...]
    verified_at: datetime


class RimStore(Protocol):
    """Where RIMs come from (a network service online, a local cache air-gapped)."""

    def get(self, rim_id: str) -> bytes:
        """Return the RIM document for ``rim_id`` or raise ``AttestationError``."""
        ...


class DirectoryRimStore:
    """Offline RIM cache: a folder of ``*.swidtag`` files.

    A RIM is found by its file name without extension (save them as ``<RIM id>.swidtag``, as
    NVIDIA's RIM service names them, e.g. ``NV_GPU_DRIVER_GH100_550.90.07``) or by the tagId
    it declares. Nothing is verified here: ``verify_rim`` does that.
    """

    def __init__(self, folder: str | Path) -> None:
        self._by_id: dict[str, bytes] = {}
        for path in sorted(Path(folder).glob("*.swidtag")):
            data = path.read_bytes()
            try:
                root = etree.fromstring(data, parser=_parser())
            except etree.XMLSyntaxError:
                continue
            self._by_id.setdefault(path.stem, data)
            tag_id = root.get("tagId")
            if tag_id:
                self._by_id.setdefault(tag_id, data)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    def get(self, rim_id: str) -> bytes:
        try:
            return self._by_id[rim_id]
        except KeyError as exc:
            raise AttestationError(
                AttestationFailure.POLICY, f"missing collateral: no cached RIM '{rim_id}'"
            ) from exc


class MappingRimStore:
    """RIMs held in memory, by id."""

    def __init__(self, rims: Mapping[str, bytes]) -> None:
        self._rims = dict(rims)

    def get(self, rim_id: str) -> bytes:
        if rim_id not in self._rims:
            raise AttestationError(
                AttestationFailure.POLICY, f"missing collateral: no RIM '{rim_id}'"
            )
        return self._rims[rim_id]


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def verify_rim(
    document: bytes, *, now: datetime, root: x509.Certificate | None = None
) -> VerifiedRim:
    """Verify a RIM's XML-DSig under its embedded chain to the pinned RIM root at ``now``.

    ``root`` defaults to NVIDIA's RIM root (package data); any other root warns every time.
    """
    rim_root = nvidia_rim_root()
    if root is not None and root != rim_root:
        warn_insecure("RIM verification trusts a root that is not NVIDIA's RIM root")
        rim_root = root
    try:
        doc = etree.fromstring(document, parser=_parser())
    except (etree.LxmlError, ValueError) as exc:
        raise AttestationError(AttestationFailure.MALFORMED, f"RIM is not XML ({exc})") from exc
    if doc is None:
        raise AttestationError(AttestationFailure.MALFORMED, "RIM is empty")
    certs: list[x509.Certificate] = []
    for node in doc.iter(f"{_DS}X509Certificate"):
        try:
            certs.append(x509.load_der_x509_certificate(base64.b64decode(node.text or "")))
        except ValueError as exc:
            raise AttestationError(
                AttestationFailure.MALFORMED, "RIM KeyInfo certificate does not parse"
            ) from exc
    if not certs:
        raise AttestationError(AttestationFailure.MALFORMED, "RIM carries no signing certificate")
    signer = certs[0]
    verify_chain(signer, certs[1:], [rim_root], now, "RIM signing chain")
    config = SignatureConfiguration(
        signature_methods=frozenset({SignatureMethod.ECDSA_SHA384}),
        digest_algorithms=frozenset({DigestAlgorithm.SHA384}),
        verification_time=now,
    )
    try:
        result = XMLVerifier().verify(document, x509_cert=signer, expect_config=config)
    except (InvalidInput, ValueError, TypeError, KeyError, AttributeError, etree.LxmlError) as exc:
        # signxml reports malformed input with a spread of exception types
        raise AttestationError(
            AttestationFailure.MALFORMED, f"RIM is not a well-formed signed document ({exc})"
        ) from exc
    except SignXMLException as exc:
        raise AttestationError(
            AttestationFailure.BAD_SIGNATURE, f"RIM signature does not verify ({exc})"
        ) from exc
    if not isinstance(result, VerifyResult):
        raise AttestationError(AttestationFailure.MALFORMED, "RIM has more than one reference")
    signed = result.signed_xml
    if signed is None or signed.tag != f"{_SWID}SoftwareIdentity":
        raise AttestationError(AttestationFailure.MALFORMED, "RIM signature does not cover a tag")
    meta = signed.find(f"{_SWID}Meta")
    measurements: list[ReferenceMeasurement] = []
    for res in signed.iter(f"{_SWID}Resource"):
        if res.get("type") != "Measurement" or res.get("active", "").lower() != "true":
            continue
        try:
            index = int(res.get("index", ""))
            count = int(res.get("alternatives", "1"))
            alts = tuple(bytes.fromhex(res.get(f"{_HASH_NS}Hash{i}", "")) for i in range(count))
        except ValueError as exc:
            raise AttestationError(
                AttestationFailure.MALFORMED, "RIM measurement has a bad index or hash"
            ) from exc
        if not alts or any(not a for a in alts):
            raise AttestationError(
                AttestationFailure.MALFORMED, f"RIM measurement {index} has no hash"
            )
        measurements.append(ReferenceMeasurement(index, res.get("name", ""), alts))
    return VerifiedRim(
        tag_id=signed.get("tagId", ""),
        version=signed.get("version", ""),
        product=meta.get("product", "") if meta is not None else "",
        colloquial_version=meta.get("colloquialVersion", "") if meta is not None else "",
        measurements=tuple(measurements),
        verified_at=now,
    )
