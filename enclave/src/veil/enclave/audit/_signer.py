"""The log's signing key: Ed25519, generated in enclave memory and never written to disk."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from veil.sdk.audit import NoteSignature, SignedNote, Verifier
from veil.sdk.errors import AuditLogError

__all__ = ["Signer"]


class Signer:
    """Signs C2SP notes (checkpoints and receipts) as ``name`` with an in-memory Ed25519 key."""

    __slots__ = ("_key", "_verifier")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._verifier = Verifier.from_public_key(name, raw)
        self._key = private_key

    @classmethod
    def generate(cls, name: str) -> Signer:
        """A fresh key from the OS CSPRNG (the enclave does this once per boot)."""
        return cls(name, Ed25519PrivateKey.generate())

    def __repr__(self) -> str:
        return f"Signer({self._verifier.vkey!r})"

    @property
    def name(self) -> str:
        return self._verifier.name

    @property
    def verifier(self) -> Verifier:
        return self._verifier

    @property
    def vkey(self) -> str:
        """``name+hash+base64(0x01 ‖ pubkey)``: what clients pin and attestation binds."""
        return self._verifier.vkey

    def sign_note(self, text: str) -> str:
        """Return the signed note for ``text`` (which must end with a newline)."""
        if not text.endswith("\n"):
            raise AuditLogError("note text must end with a newline")
        signature = self._key.sign(text.encode("utf-8"))
        note = SignedNote(
            text=text,
            signatures=(NoteSignature(self.name, self._verifier.key_hash, signature),),
        )
        return note.to_text()
