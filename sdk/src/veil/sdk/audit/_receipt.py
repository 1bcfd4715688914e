"""Receipts: the log's signed statement that a request/response pair was logged at a leaf.

A v1 receipt is a C2SP signed note, signed by the log key, whose text is
``veil-audit-receipt/v1\\n<canonical JSON>\\n``. The first line keeps receipts and checkpoints
apart (a checkpoint's second line is a tree size, never JSON). The client verifies it on arrival
with the log's verifier key, and later proves the leaf is in a newer checkpoint.

A v2 receipt (protocol 1.2) carries the same JSON line unsigned, plus its inclusion proof into a
*batch*: the receipts of one group commit of the tenant's log are the leaves of a small RFC 9162
tree whose root the log signs once (``veil-audit-receipt-batch/v2``), so a batch of N calls costs
one signature instead of N::

    veil-audit-receipt/v2\\n <receipt JSON>\\n {"batch_index":i,"proof":[...]}\\n
    \\n <signed batch note>

``batch_receipts`` builds them (the enclave), ``verify_receipt`` verifies either version.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring
from typing import Any

from veil.sdk.audit._checkpoint import Checkpoint
from veil.sdk.audit._merkle import HASH_SIZE, MerkleTree, hash_leaf, verify_inclusion
from veil.sdk.audit._note import SignedNote, Verifier, _b64decode
from veil.sdk.audit.records import canonical_json, check_tenant, parse_time
from veil.sdk.errors import AuditFailure, AuditLogError

__all__ = [
    "BATCH_HEADER",
    "RECEIPT_HEADER",
    "RECEIPT_V2_HEADER",
    "Receipt",
    "batch_receipts",
    "check_receipt_inclusion",
    "verify_receipt",
]

RECEIPT_HEADER = "veil-audit-receipt/v1"
RECEIPT_V2_HEADER = "veil-audit-receipt/v2"
BATCH_HEADER = "veil-audit-receipt-batch/v2"
MAX_BATCH = 1 << 20  # receipts in one signed batch; a proof is at most 20 hashes
_MAX_SAFE_INT = 2**53 - 1  # canonical_json's integer domain
_POSITION_FIELDS = frozenset({"batch_index", "proof"})
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
        """The note text the log signs (v1)."""
        return f"{RECEIPT_HEADER}\n{self.json_line()}\n"

    def json_line(self) -> str:
        """The receipt's fields as one line of canonical JSON (v1's note line, v2's leaf).

        Byte for byte ``canonical_json`` of the fields. The fields are already type-checked, so
        when every string is ASCII (all the enclave writes) the line is formatted directly, keys
        in sorted order, strings escaped by the encoder ``canonical_json`` itself uses; any other
        string goes through ``canonical_json`` (which refuses what UTF-8 cannot encode).
        """
        leaf_hash = base64.b64encode(self.leaf_hash).decode()
        model = self.model_digest
        text = self.log + self.tenant + self.time + self.request_digest + self.response_digest
        if text.isascii() and (model is None or model.isascii()):
            return (
                f'{{"leaf_hash":"{leaf_hash}","leaf_index":{int.__repr__(self.leaf_index)}'
                f',"log":{encode_basestring(self.log)}'
                f',"model_digest":{"null" if model is None else encode_basestring(model)}'
                f',"request_digest":{encode_basestring(self.request_digest)}'
                f',"response_digest":{encode_basestring(self.response_digest)}'
                f',"tenant":{encode_basestring(self.tenant)}'
                f',"time":{encode_basestring(self.time)}}}'
            )
        payload = {
            "log": self.log,
            "tenant": self.tenant,
            "leaf_index": self.leaf_index,
            "leaf_hash": leaf_hash,
            "time": self.time,
            "request_digest": self.request_digest,
            "response_digest": self.response_digest,
            "model_digest": model,
        }
        return canonical_json(payload).decode()

    @classmethod
    def from_body(cls, text: str) -> Receipt:
        header, sep, rest = text.partition("\n")
        if header != RECEIPT_HEADER or not sep or not rest.endswith("\n") or "\n" in rest[:-1]:
            raise AuditLogError(f"receipt text is not '{RECEIPT_HEADER}' plus one JSON line")
        return cls.from_json_line(rest[:-1])

    @classmethod
    def from_json_line(cls, line: str) -> Receipt:
        """Parse a receipt's JSON line; it must be in canonical form."""
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise AuditLogError("receipt payload is not valid JSON") from exc
        if not isinstance(obj, dict) or obj.keys() != _FIELDS:
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
        if receipt.json_line() != line:
            raise AuditLogError("receipt payload is not in canonical form")
        return receipt


def _position_json(position: dict[str, Any]) -> str:
    """``canonical_json`` of a batch position ``{"batch_index": int, "proof": [str, ...]}``,
    formatted directly for a safe integer and ASCII strings (all the enclave writes); anything
    else goes through ``canonical_json`` (which refuses what it cannot encode)."""
    index, proof = position["batch_index"], position["proof"]
    if type(index) is int and -_MAX_SAFE_INT <= index <= _MAX_SAFE_INT and "".join(proof).isascii():
        return f'{{"batch_index":{index},"proof":[{",".join(map(encode_basestring, proof))}]}}'
    return canonical_json(position).decode()


def _batch_text(log: str, count: int, root: bytes) -> str:
    return f"{BATCH_HEADER}\n{log}\n{count}\n{base64.b64encode(root).decode()}\n"


def batch_receipts(receipts: Sequence[Receipt], sign: Callable[[str], str]) -> list[str]:
    """v2 receipts for one batch of one log: one call to ``sign`` (a note signer) for them all.

    The batch tree's leaf ``j`` is ``hash_leaf`` of receipt ``j``'s JSON line; the signed note
    names the log, the batch size and the root. Returns the receipts in the order given.
    """
    if not receipts:
        return []
    if len(receipts) > MAX_BATCH:
        raise AuditLogError(f"a receipt batch holds at most {MAX_BATCH} receipts")
    log = receipts[0].log
    if any(r.log != log for r in receipts):
        raise AuditLogError("a receipt batch must not mix logs")
    lines = [r.json_line() for r in receipts]
    tree = MerkleTree()
    for line in lines:
        tree.append_hash(hash_leaf(line.encode()))
    note = sign(_batch_text(log, len(lines), tree.root()))
    out = []
    for index, line in enumerate(lines):
        proof = [base64.b64encode(h).decode() for h in tree.inclusion_proof(index)]
        position = _position_json({"batch_index": index, "proof": proof})
        out.append(f"{RECEIPT_V2_HEADER}\n{line}\n{position}\n\n{note}")
    return out


@functools.lru_cache(maxsize=64)
def _verified_batch(note: str, log_key: Verifier) -> str:
    """The text of a batch note whose signature by ``log_key`` verified.

    The receipts of one group commit share their batch note, so a client with calls in flight
    together checks its signature once. Only successes are cached, keyed by the exact note text
    and key: a hit is the same verification of the same bytes.
    """
    return SignedNote.from_text(note).verify(log_key).text


def _open_v2(text: str, log_key: Verifier) -> Receipt:
    """Check a v2 receipt's batch note, its proof into the batch, and parse its JSON line."""
    parts = text.split("\n", 4)
    if len(parts) != 5 or parts[0] != RECEIPT_V2_HEADER or parts[3] != "":
        raise AuditLogError(f"receipt is not '{RECEIPT_V2_HEADER}', a JSON line, a proof, a note")
    line, position, note = parts[1], parts[2], parts[4]
    receipt = Receipt.from_json_line(line)
    rows = _verified_batch(note, log_key).split("\n")
    if len(rows) != 5 or rows[0] != BATCH_HEADER or rows[4] != "":
        raise AuditLogError("receipt batch note is malformed")
    if rows[1] != receipt.log:
        raise AuditLogError("receipt batch note is for another log", reason=AuditFailure.MISMATCH)
    size = rows[2]
    try:
        count = int(size) if size.isascii() and size.isdigit() else -1
    except ValueError:  # more digits than Python parses (4300 by default): not a batch size
        count = -1
    if count < 0 or size != str(count):
        raise AuditLogError("receipt batch size is not a decimal integer")
    root = _b64decode(rows[3], "receipt batch root")
    try:
        obj = json.loads(position)
    except ValueError as exc:
        raise AuditLogError("receipt batch position is not valid JSON") from exc
    if not isinstance(obj, dict) or obj.keys() != _POSITION_FIELDS:
        raise AuditLogError("receipt batch position must have batch_index and proof")
    index, proof = obj["batch_index"], obj["proof"]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise AuditLogError("receipt batch index is outside the batch")
    if not isinstance(proof, list) or not all(isinstance(h, str) for h in proof):
        raise AuditLogError("receipt batch proof must be a list of base64 hashes")
    if _position_json(obj) != position:
        raise AuditLogError("receipt batch position is not in canonical form")
    hashes = [_b64decode(h, "receipt batch proof") for h in proof]
    verify_inclusion(hash_leaf(line.encode()), index, count, hashes, root)
    return receipt


def verify_receipt(
    note: str | bytes,
    log_key: Verifier,
    *,
    tenant: str | None = None,
    request_digest: str | None = None,
    response_digest: str | None = None,
) -> Receipt:
    """Verify a receipt (v1: its own signature; v2: its batch's) and return what it proves.

    The optional arguments must match the receipt when given (a client passes the digests it
    computed itself, so a receipt for another exchange is refused).
    """
    try:
        text = note.decode() if isinstance(note, bytes) else note
    except UnicodeDecodeError as exc:
        raise AuditLogError("receipt is not UTF-8") from exc
    if text.startswith(RECEIPT_V2_HEADER + "\n"):
        receipt = _open_v2(text, log_key)
    else:
        receipt = Receipt.from_body(SignedNote.from_text(text).verify(log_key).text)
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
