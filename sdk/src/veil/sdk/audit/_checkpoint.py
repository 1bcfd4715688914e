"""C2SP tlog-checkpoint bodies (https://c2sp.org/tlog-checkpoint) and their verification.

A checkpoint body is ``<origin>\\n<tree size>\\n<base64 root hash>\\n`` followed by optional
non-empty extension lines; it travels as the text of a signed note.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass

from veil.sdk.audit._merkle import HASH_SIZE, verify_consistency
from veil.sdk.audit._note import SignedNote, Verifier, _b64decode
from veil.sdk.errors import AuditLogError

__all__ = ["Checkpoint", "verify_checkpoint", "verify_checkpoint_consistency"]

_SIZE = re.compile(r"0|[1-9][0-9]{0,19}")


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: the log's origin, its size and its RFC 9162 root hash."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise AuditLogError("checkpoint origin must be one non-empty line")
        if not 0 <= self.size < 2**64:
            raise AuditLogError(f"checkpoint tree size {self.size} is out of range")
        if len(self.root_hash) != HASH_SIZE:
            raise AuditLogError(f"checkpoint root hash is {len(self.root_hash)} bytes")
        if any(not e or "\n" in e for e in self.extensions):
            raise AuditLogError("checkpoint extension lines must be non-empty single lines")

    @classmethod
    def from_text(cls, body: str) -> Checkpoint:
        """Parse a checkpoint body (the text of the note, without signatures)."""
        if not body.endswith("\n"):
            raise AuditLogError("checkpoint body does not end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) < 3:
            raise AuditLogError(f"checkpoint body has {len(lines)} lines, expected at least 3")
        origin, size_text, root_b64, *extensions = lines
        if not _SIZE.fullmatch(size_text):
            raise AuditLogError(f"checkpoint tree size {size_text!r} is not a decimal number")
        root = _b64decode(root_b64, "checkpoint root hash")
        return cls(origin, int(size_text), root, tuple(extensions))

    def to_text(self) -> str:
        root = base64.b64encode(self.root_hash).decode()
        lines = (self.origin, str(self.size), root, *self.extensions)
        return "".join(f"{line}\n" for line in lines)


def verify_checkpoint(
    note: str | bytes,
    verifiers: Verifier | Iterable[Verifier],
    *,
    origin: str | None = None,
) -> Checkpoint:
    """Verify a signed checkpoint note and return the checkpoint it proves.

    ``origin``, when given, must equal the checkpoint's origin line.
    """
    verified = SignedNote.from_text(note).verify(verifiers)
    checkpoint = Checkpoint.from_text(verified.text)
    if origin is not None and checkpoint.origin != origin:
        raise AuditLogError(f"checkpoint is for log {checkpoint.origin!r}, expected {origin!r}")
    return checkpoint


def verify_checkpoint_consistency(old: Checkpoint, new: Checkpoint, proof: list[bytes]) -> None:
    """Prove ``new`` extends ``old`` (same origin, append-only); raises ``AuditLogError``."""
    if old.origin != new.origin:
        raise AuditLogError(f"checkpoints are for different logs: {old.origin!r}, {new.origin!r}")
    verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
