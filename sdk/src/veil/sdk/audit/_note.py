"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 verifier keys.

A note is UTF-8 text ending in a newline, a blank line, then one or more signature lines
``— <name> <base64(key hash ‖ signature)>``. The key hash is the first four bytes of
``SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key)``; a verifier key is written
``<name>+<hex key hash>+<base64(0x01 ‖ public key)>``.

Verification follows the reference implementation (golang.org/x/mod/sumdb/note): signatures by
unknown keys are ignored, a signature by a known key that does not verify is an error, and a note
with no signature from any known key is rejected.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from veil.sdk.errors import AuditFailure, AuditLogError

__all__ = [
    "ALG_ED25519",
    "NoteSignature",
    "SignedNote",
    "VerifiedNote",
    "Verifier",
    "key_hash",
]

ALG_ED25519 = 0x01
_SIG_PREFIX = "\u2014 "
_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f]")  # C0 controls but newline, and DEL
_MAX_SIGNATURES = 100


def _check_name(name: str) -> None:
    # ``name.split() == [name]``: non-empty and no character with ``str.isspace()`` (the same
    # whitespace test, without a Python step per character).
    if name.split() != [name] or "+" in name:
        raise AuditLogError(f"invalid key name {name!r}: must be non-empty, no spaces, no '+'")


def key_hash(name: str, public_key: bytes, alg: int = ALG_ED25519) -> bytes:
    """The 4-byte key hash: SHA-256(name ‖ '\\n' ‖ alg ‖ public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()[:4]


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise AuditLogError(f"{what} is not valid base64") from exc


@dataclass(frozen=True)
class Verifier:
    """An Ed25519 note verifier key: who signs (``name``) and with what key."""

    name: str
    key_hash: bytes
    public_key: bytes

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        """Parse ``name+hash+base64(0x01 ‖ pubkey)``; the hash must match the key."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise AuditLogError("verifier key must have the form name+hash+key")
        name, hash_hex, key_b64 = parts
        _check_name(name)
        if len(hash_hex) != 8 or hash_hex != hash_hex.lower():
            raise AuditLogError("verifier key hash must be 8 lower-case hex digits")
        try:
            claimed = bytes.fromhex(hash_hex)
        except ValueError as exc:
            raise AuditLogError("verifier key hash is not hex") from exc
        raw = _b64decode(key_b64, "verifier key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise AuditLogError("verifier key is not an Ed25519 (0x01) key of 32 bytes")
        verifier = cls.from_public_key(name, raw[1:])
        if verifier.key_hash != claimed:
            raise AuditLogError(f"verifier key hash {hash_hex} does not match key for {name!r}")
        return verifier

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> Verifier:
        _check_name(name)
        if len(public_key) != 32:
            raise AuditLogError(f"Ed25519 public key is {len(public_key)} bytes, expected 32")
        return cls(name=name, key_hash=key_hash(name, public_key), public_key=public_key)

    @property
    def vkey(self) -> str:
        key = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_hash.hex()}+{key}"

    def verify(self, message: bytes, signature: bytes) -> None:
        """Check one Ed25519 signature; raises ``AuditLogError`` if it does not verify."""
        try:
            _ed25519_key(self.public_key).verify(signature, message)
        except (InvalidSignature, ValueError) as exc:
            raise AuditLogError(
                f"signature by {self.name!r} does not verify", reason=AuditFailure.BAD_SIGNATURE
            ) from exc


@functools.lru_cache(maxsize=64)
def _ed25519_key(public_key: bytes) -> Ed25519PublicKey:
    """The parsed key (a client verifies many notes under the same few keys)."""
    return Ed25519PublicKey.from_public_bytes(public_key)


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_hash: bytes
    signature: bytes

    def to_line(self) -> str:
        blob = base64.b64encode(self.key_hash + self.signature).decode()
        return f"{_SIG_PREFIX}{self.name} {blob}\n"


@dataclass(frozen=True)
class VerifiedNote:
    """A note whose text was proven signed by every key named in ``verified_by``."""

    text: str
    verified_by: tuple[str, ...]


@dataclass(frozen=True)
class SignedNote:
    """A parsed (not yet verified) signed note."""

    text: str
    signatures: tuple[NoteSignature, ...]

    @classmethod
    def from_text(cls, note: str | bytes) -> SignedNote:
        if isinstance(note, bytes):
            try:
                note = note.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise AuditLogError("signed note is not valid UTF-8") from exc
        if _CONTROL.search(note):
            raise AuditLogError("signed note contains control characters")
        split = note.rfind("\n\n")
        if split < 0:
            raise AuditLogError("signed note has no blank line before its signatures")
        text, sig_block = note[: split + 1], note[split + 2 :]
        if not sig_block.endswith("\n"):
            raise AuditLogError("signed note does not end with a newline")
        signatures: list[NoteSignature] = []
        for line in sig_block[:-1].split("\n"):
            if not line.startswith(_SIG_PREFIX):
                raise AuditLogError("signed note signature line does not start with an em dash")
            fields = line[len(_SIG_PREFIX) :].split(" ")
            if len(fields) != 2:
                raise AuditLogError("signed note signature line is not '— name signature'")
            name, blob_b64 = fields
            _check_name(name)
            blob = _b64decode(blob_b64, f"signature by {name!r}")
            if len(blob) < 5:
                raise AuditLogError(f"signature by {name!r} is too short")
            signatures.append(NoteSignature(name, blob[:4], blob[4:]))
        if len(signatures) > _MAX_SIGNATURES:
            raise AuditLogError(f"signed note has more than {_MAX_SIGNATURES} signatures")
        return cls(text=text, signatures=tuple(signatures))

    def to_text(self) -> str:
        return self.text + "\n" + "".join(s.to_line() for s in self.signatures)

    def verify(self, verifiers: Verifier | Iterable[Verifier]) -> VerifiedNote:
        """Verify against known keys: unknown signers are ignored, a bad known one is fatal."""
        known = [verifiers] if isinstance(verifiers, Verifier) else list(verifiers)
        by_id = {(v.name, v.key_hash): v for v in known}
        message = self.text.encode("utf-8")
        verified: list[str] = []
        for sig in self.signatures:
            verifier = by_id.get((sig.name, sig.key_hash))
            if verifier is None:
                continue
            if verifier.name in verified:
                raise AuditLogError(f"signed note carries two signatures by {sig.name!r}")
            verifier.verify(message, sig.signature)
            verified.append(verifier.name)
        if not verified:
            names = ", ".join(sorted({v.name for v in known})) or "none"
            raise AuditLogError(
                f"signed note has no signature by a known key (known: {names})",
                reason=AuditFailure.BAD_SIGNATURE,
            )
        return VerifiedNote(text=self.text, verified_by=tuple(verified))
