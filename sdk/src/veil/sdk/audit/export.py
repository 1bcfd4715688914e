"""Offline verification of an audit export directory.

An export holds ``entries.jsonl`` (the log's leaves, one per line, in log order), ``checkpoint``
(a signed note over the tree they belong to), ``log.pub`` (the log's verifier key), an
``attestation/`` folder, and one of:

* ``leafhashes.bin`` for a full export (the tree is exactly the entries): the 32-byte leaf hashes
  in order. It is only read when the entries fail to reproduce the signed root, to say precisely
  which line is wrong; it is itself authenticated against the signed root first.
* ``proofs.jsonl`` for a ranged export: for every entry, ``{"index", "leaf_hash", "proof"}``, an
  RFC 9162 inclusion proof into the checkpoint's tree.

``verify_export`` raises ``AuditLogError`` naming the first failure: swapped key, re-signed or
wrong checkpoint, or the first edited, inserted, deleted, reordered, duplicated or truncated line.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from veil.sdk.audit._checkpoint import Checkpoint
from veil.sdk.audit._merkle import HASH_SIZE, hash_leaf, root_from_leaf_hashes, verify_inclusion
from veil.sdk.audit._note import SignedNote, Verifier, _b64decode
from veil.sdk.audit.records import AuditRecord
from veil.sdk.errors import AuditLogError, warn_insecure

__all__ = [
    "CHECKPOINT_FILE",
    "ENTRIES_FILE",
    "LEAF_HASHES_FILE",
    "PROOFS_FILE",
    "PUBKEY_FILE",
    "VerifiedExport",
    "verify_export",
]

ENTRIES_FILE = "entries.jsonl"
CHECKPOINT_FILE = "checkpoint"
PUBKEY_FILE = "log.pub"
LEAF_HASHES_FILE = "leafhashes.bin"
PROOFS_FILE = "proofs.jsonl"
ATTESTATION_DIR = "attestation"


@dataclass(frozen=True)
class VerifiedExport:
    """What a verified export proves: these entries are leaves of this signed tree."""

    path: Path
    vkey: str
    checkpoint: Checkpoint
    tenant: str
    indices: tuple[int, ...]
    full: bool
    _lines: tuple[bytes, ...] = field(repr=False, compare=False)

    @property
    def entry_count(self) -> int:
        return len(self._lines)

    @property
    def lines(self) -> tuple[str, ...]:
        """The verified entries as exported, one JSON line each (for merging replicas' logs)."""
        return tuple(line.decode("utf-8") for line in self._lines)

    def records(self) -> Iterator[tuple[int, AuditRecord]]:
        """The verified entries as parsed records, with their leaf indices."""
        for index, line in zip(self.indices, self._lines, strict=True):
            yield index, AuditRecord.from_line(line)


def _reject(message: str) -> AuditLogError:
    return AuditLogError(f"audit export rejected: {message}")


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _reject(f"{what} cannot be read ({exc.strerror})") from exc


def _split_lines(data: bytes) -> tuple[list[bytes], bool]:
    """Lines of ``data`` and whether the last one was cut short (no final newline)."""
    if not data:
        return [], False
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
        return lines, False
    return lines, True


def _load_key(
    directory: Path,
    expect_vkey: str | None,
    attestation_check: Callable[[Path], str] | None,
) -> Verifier:
    try:
        published = _read(directory / PUBKEY_FILE, PUBKEY_FILE).decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise _reject(f"{PUBKEY_FILE} is not UTF-8") from exc
    try:
        verifier = Verifier.from_vkey(published)
    except AuditLogError as exc:
        raise _reject(f"{PUBKEY_FILE} is not a valid verifier key: {exc}") from exc
    trusted: list[tuple[str, str]] = []
    if attestation_check is not None:
        trusted.append(("the key bound by the enclave attestation", attestation_check(directory)))
    if expect_vkey is not None:
        trusted.append(("the expected key", expect_vkey))
    if not trusted:
        warn_insecure(
            "verifying an audit export against its own log.pub: without an expected key or an "
            "attestation check this proves internal consistency only"
        )
    for what, vkey in trusted:
        if vkey.strip() != published:
            raise _reject(f"{PUBKEY_FILE} is not {what} (swapped key): {published!r}")
    return verifier


def _load_checkpoint(directory: Path, verifier: Verifier) -> Checkpoint:
    raw = _read(directory / CHECKPOINT_FILE, CHECKPOINT_FILE)
    try:
        note = SignedNote.from_text(raw)
    except AuditLogError as exc:
        raise _reject(f"checkpoint is not a signed note: {exc}") from exc
    try:
        verified = note.verify(verifier)
    except AuditLogError as exc:
        raise _reject(
            f"checkpoint signature does not verify under {verifier.name!r} "
            f"(checkpoint edited or re-signed by another key): {exc}"
        ) from exc
    try:
        checkpoint = Checkpoint.from_text(verified.text)
    except AuditLogError as exc:
        raise _reject(f"signed checkpoint body is malformed: {exc}") from exc
    if not checkpoint.origin.startswith(verifier.name + "/"):
        raise _reject(
            f"checkpoint origin {checkpoint.origin!r} is not a log of key {verifier.name!r}"
        )
    return checkpoint


def _locate_first_failure(
    line_hashes: Sequence[bytes],
    cut_short: bool,
    signed: Sequence[tuple[int, bytes]],
) -> str:
    """Compare the export's lines with the authenticated leaves; describe the first mismatch."""
    where: defaultdict[bytes, list[int]] = defaultdict(list)
    for q, (_, h) in enumerate(signed):
        where[h].append(q)
    lines_at: defaultdict[bytes, list[int]] = defaultdict(list)
    for p, h in enumerate(line_hashes):
        lines_at[h].append(p)
    last = len(line_hashes) - 1
    p = q = 0
    while p < len(line_hashes) and q < len(signed):
        h = line_hashes[p]
        index, want = signed[q]
        if h == want:
            p += 1
            q += 1
            continue
        line = p + 1
        if cut_short and p == last:
            return f"line {line} (entry {index}) is cut short: the export is truncated"
        if any(x > q for x in where.get(h, ())):
            held = signed[next(x for x in where[h] if x > q)][0]
            if any(x > p for x in lines_at.get(want, ())):
                return (
                    f"line {line} holds entry {held} where entry {index} belongs "
                    "(entries reordered)"
                )
            return f"entry {index} is missing before line {line} (entry deleted)"
        if any(x < q for x in where.get(h, ())):
            held = signed[max(x for x in where[h] if x < q)][0]
            return f"line {line} repeats entry {held} (entry duplicated)"
        if p + 1 < len(line_hashes) and line_hashes[p + 1] == want:
            return f"line {line} is not a leaf of the signed tree (entry inserted)"
        return f"line {line} (entry {index}) was edited: its hash is not the signed leaf"
    if p < len(line_hashes):
        h = line_hashes[p]
        if h in where:
            return f"line {p + 1} repeats entry {signed[where[h][0]][0]} (entry duplicated)"
        return f"line {p + 1} is beyond the signed entries (entry inserted)"
    if q < len(signed):
        return (
            f"the export ends after line {p}; entries {signed[q][0]}..{signed[-1][0]} are "
            "missing (export truncated)"
        )
    return "entries do not reproduce the signed root"


def _signed_leaves_full(directory: Path, checkpoint: Checkpoint) -> list[tuple[int, bytes]]:
    path = directory / LEAF_HASHES_FILE
    raw = path.read_bytes() if path.is_file() else b""
    hashes = [raw[i : i + HASH_SIZE] for i in range(0, len(raw), HASH_SIZE)]
    if (
        len(raw) % HASH_SIZE
        or len(hashes) != checkpoint.size
        or root_from_leaf_hashes(hashes) != checkpoint.root_hash
    ):
        raise _reject(
            f"entries do not reproduce the signed root of tree size {checkpoint.size}, and "
            f"{LEAF_HASHES_FILE} is missing or not for this checkpoint: wrong checkpoint or "
            "tampered export"
        )
    return list(enumerate(hashes))


def _signed_leaves_ranged(directory: Path, checkpoint: Checkpoint) -> list[tuple[int, bytes]]:
    raw = _read(directory / PROOFS_FILE, PROOFS_FILE)
    lines, cut = _split_lines(raw)
    if cut:
        raise _reject(f"{PROOFS_FILE} is cut short (no final newline)")
    signed: list[tuple[int, bytes]] = []
    for n, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line)
            index = obj["index"]
            leaf_hash = _b64decode(obj["leaf_hash"], "leaf hash")
            proof = [_b64decode(x, "proof hash") for x in obj["proof"]]
            if not isinstance(index, int) or isinstance(index, bool):
                raise TypeError("index is not an integer")
            verify_inclusion(leaf_hash, index, checkpoint.size, proof, checkpoint.root_hash)
        except (ValueError, KeyError, TypeError, AuditLogError) as exc:
            raise _reject(
                f"{PROOFS_FILE} line {n} does not prove a leaf of the checkpoint "
                f"(wrong checkpoint or tampered proofs): {exc}"
            ) from exc
        if signed and index <= signed[-1][0]:
            raise _reject(f"{PROOFS_FILE} line {n} is out of log order")
        signed.append((index, leaf_hash))
    return signed


def verify_export(
    directory: str | Path,
    *,
    expect_vkey: str | None = None,
    attestation_check: Callable[[Path], str] | None = None,
) -> VerifiedExport:
    """Verify an export offline; return what it proves or raise ``AuditLogError``.

    ``expect_vkey`` pins the log key; ``attestation_check(dir)`` (injected by the service layer)
    verifies the evidence under ``dir/attestation`` and returns the log vkey it binds. With
    neither, the export is only checked against its own ``log.pub`` and an
    ``InsecureModeWarning`` is emitted.
    """
    directory = Path(directory)
    verifier = _load_key(directory, expect_vkey, attestation_check)
    checkpoint = _load_checkpoint(directory, verifier)
    lines, cut_short = _split_lines(_read(directory / ENTRIES_FILE, ENTRIES_FILE))
    line_hashes = [hash_leaf(line) for line in lines]
    full = not (directory / PROOFS_FILE).exists()
    if full:
        ok = (
            not cut_short
            and len(line_hashes) == checkpoint.size
            and root_from_leaf_hashes(line_hashes) == checkpoint.root_hash
        )
        if not ok:
            signed = _signed_leaves_full(directory, checkpoint)
            raise _reject(_locate_first_failure(line_hashes, cut_short, signed))
        indices: tuple[int, ...] = tuple(range(len(lines)))
    else:
        signed = _signed_leaves_ranged(directory, checkpoint)
        if cut_short or [h for _, h in signed] != line_hashes:
            raise _reject(_locate_first_failure(line_hashes, cut_short, signed))
        indices = tuple(i for i, _ in signed)
    tenant = checkpoint.origin[len(verifier.name) + 1 :]
    return VerifiedExport(
        path=directory,
        vkey=verifier.vkey,
        checkpoint=checkpoint,
        tenant=tenant,
        indices=indices,
        full=full,
        _lines=tuple(lines),
    )
