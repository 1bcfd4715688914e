"""Verification side of Veil's audit log: light, no server dependencies.

RFC 9162 Merkle trees and proofs, C2SP signed notes and tlog checkpoints, audit records,
receipts and offline verification of exports. The writer lives in ``veil.enclave.audit``.
"""

from veil.sdk.audit._checkpoint import Checkpoint, verify_checkpoint, verify_checkpoint_consistency
from veil.sdk.audit._merkle import (
    MerkleTree,
    empty_root,
    hash_children,
    hash_leaf,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from veil.sdk.audit._note import NoteSignature, SignedNote, VerifiedNote, Verifier, key_hash
from veil.sdk.audit._receipt import (
    Receipt,
    batch_receipts,
    check_receipt_inclusion,
    verify_receipt,
)
from veil.sdk.audit.export import VerifiedExport, verify_export
from veil.sdk.audit.records import AuditRecord, DigestKey, EventType, Outcome, canonical_json

__all__ = [
    "AuditRecord",
    "Checkpoint",
    "DigestKey",
    "EventType",
    "MerkleTree",
    "NoteSignature",
    "Outcome",
    "Receipt",
    "SignedNote",
    "VerifiedExport",
    "VerifiedNote",
    "Verifier",
    "batch_receipts",
    "canonical_json",
    "check_receipt_inclusion",
    "empty_root",
    "hash_children",
    "hash_leaf",
    "key_hash",
    "root_from_leaf_hashes",
    "verify_checkpoint",
    "verify_checkpoint_consistency",
    "verify_consistency",
    "verify_export",
    "verify_inclusion",
    "verify_receipt",
]
