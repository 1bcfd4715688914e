"""Receipts: the log's signed statement that a request/response pair was logged at a leaf.

A receipt is a C2SP signed note, signed by the log key, whose text is
``veil-audit-receipt/v1\\n<canonical JSON>\\n``. The first line keeps receipts and checkpoints
apart (a checkpoint's second line is a tree size, never JSON). The client verifies it on arrival
with the log's verifier key, and later proves the leaf is in a newer checkpoint.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from veil.sdk.audit._checkpoint import Checkpoint
from veil.sdk.audit._merkle import HASH_SIZE, verify_inclusion
from veil.sdk.audit._note import SignedNote, Verifier, _b64decode
from veil.sdk.audit.records import canonical_json, check_tenant, parse_time
from veil.sdk.errors import AuditFailure, AuditLogError

__all__ = ["RECEIPT_HEADER", "Receipt", "check_receipt_inclusion", "verify_receipt"]

RECEIPT_HEADER = "veil-audit-receipt/v1"
_FIELDS = frozenset(
    {
        "log",
        "tenant",
        "leaf_index",
        "leaf_hash",
        "time",
        "request_digest",
        "response_digest",
        "model_digest",
    }
)


@dataclass(frozen=True)
class Receipt:
    """What the log signed: which request/response/model, for whom, when, and at which leaf."""

    log: str
    tenant: str
    leaf_index: int
    leaf_hash: bytes
    time: str
    request_digest: str
    response_digest: str
    model_digest: str | None = None

    def __post_init__(self) -> None:
        check_tenant(self.tenant)
        parse_time(self.time)
        if not isinstance(self.leaf_index, int) or isinstance(self.leaf_index, bool):
            raise AuditLogError("receipt leaf index must be an integer")
        if not 0 <= self.leaf_index < 2**53:
            raise AuditLogError(f"receipt leaf index {self.leaf_index} is out of range")
        if len(self.leaf_hash) != HASH_SIZE:
            raise AuditLogError(f"receipt leaf hash is {len(self.leaf_hash)} bytes")
        for name in ("log", "request_digest", "response_digest"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise AuditLogError(f"receipt {name} must be a non-empty string")
        if self.model_digest is not None and not isinstance(self.model_digest, str):
            raise AuditLogError("receipt model_digest must be a string or null")

    @property
    def when(self) -> datetime:
        return parse_time(self.time)

    def body(self) -> str:
        """The note text the log signs."""
        payload = {
            "log": self.log,
            "tenant": self.tenant,
            "leaf_index": self.leaf_index,
            "leaf_hash": base64.b64encode(self.leaf_hash).decode(),
            "time": self.time,
            "request_digest": self.request_digest,
            "response_digest": self.response_digest,
            "model_digest": self.model_digest,
        }
        return f"{RECEIPT_HEADER}\n{canonical_json(payload).decode()}\n"

    @classmethod
    def from_body(cls, text: str) -> Receipt:
        header, sep, rest = text.partition("\n")
        if header != RECEIPT_HEADER or not sep or not rest.endswith("\n") or "\n" in rest[:-1]:
            raise AuditLogError(f"receipt text is not '{RECEIPT_HEADER}' plus one JSON line")
        try:
            obj = json.loads(rest[:-1])
        except ValueError as exc:
            raise AuditLogError("receipt payload is not valid JSON") from exc
        if not isinstance(obj, dict) or set(obj) != _FIELDS:
            raise AuditLogError("receipt payload does not have exactly the expected fields")
        if not isinstance(obj["leaf_hash"], str):
            raise AuditLogError("receipt leaf hash must be base64 text")
        try:
            receipt = cls(
                log=obj["log"],
                tenant=obj["tenant"],
                leaf_index=obj["leaf_index"],
                leaf_hash=_b64decode(obj["leaf_hash"], "receipt leaf hash"),
                time=obj["time"],
                request_digest=obj["request_digest"],
                response_digest=obj["response_digest"],
                model_digest=obj["model_digest"],
            )
        except TypeError as exc:
            raise AuditLogError(f"receipt field has the wrong type: {exc}") from exc
        if receipt.body() != text:
            raise AuditLogError("receipt payload is not in canonical form")
        return receipt


def verify_receipt(
    note: str | bytes,
    log_key: Verifier,
    *,
    tenant: str | None = None,
    request_digest: str | None = None,
    response_digest: str | None = None,
) -> Receipt:
    """Verify a receipt's signature under the log key and return what it proves.

    The optional arguments must match the receipt when given (a client passes the digests it
    computed itself, so a receipt for another exchange is refused).
    """
    verified = SignedNote.from_text(note).verify(log_key)
    receipt = Receipt.from_body(verified.text)
    if not receipt.log.startswith(log_key.name + "/"):
        raise AuditLogError(
            f"receipt names log {receipt.log!r}, not a log of {log_key.name!r}",
            reason=AuditFailure.MISMATCH,
        )
    expected = {
        "tenant": tenant,
        "request_digest": request_digest,
        "response_digest": response_digest,
    }
    for name, want in expected.items():
        if want is not None and getattr(receipt, name) != want:
            raise AuditLogError(
                f"receipt {name} does not match this exchange", reason=AuditFailure.MISMATCH
            )
    return receipt


def check_receipt_inclusion(
    receipt: Receipt, checkpoint: Checkpoint, proof: Sequence[bytes]
) -> None:
    """Prove the receipt's leaf is in a (verified) checkpoint's tree; raises on failure."""
    if checkpoint.origin != receipt.log:
        raise AuditLogError(
            f"receipt is for log {receipt.log!r} but the checkpoint is for {checkpoint.origin!r}"
        )
    if receipt.leaf_index >= checkpoint.size:
        raise AuditLogError(
            f"receipt leaf {receipt.leaf_index} is not yet in the tree of size {checkpoint.size}"
        )
    verify_inclusion(
        receipt.leaf_hash, receipt.leaf_index, checkpoint.size, proof, checkpoint.root_hash
    )
