"""RFC 9162 §2.1 Merkle tree hashing, proof generation and proof verification.

Leaves are hashed as ``SHA-256(0x00 || data)``, interior nodes as ``SHA-256(0x01 || l || r)``
and the root of the empty tree is ``SHA-256("")``.

``MerkleTree`` is an append-only tree that keeps every leaf hash and every complete (aligned,
power-of-two) subtree root of ``2**STORED_FROM`` leaves or more in flat ``bytearray`` levels, so
appending costs one leaf hash plus on average one node hash, and any root, inclusion proof or
consistency proof for any tree size up to the current one needs only O(log² n) work, never a
rehash of the log. Memory: 32 bytes per leaf plus ``64 / 2**STORED_FROM`` (4) for the levels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from veil.sdk.errors import AuditFailure, AuditLogError

__all__ = [
    "HASH_SIZE",
    "MerkleTree",
    "empty_root",
    "hash_children",
    "hash_leaf",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
_LEAF = b"\x00"
_NODE = b"\x01"
_sha256 = hashlib.sha256


def hash_leaf(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || data)."""
    return _sha256(_LEAF + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return _sha256(_NODE + left + right).digest()


def empty_root() -> bytes:
    """Root hash of the tree with no leaves: SHA-256 of the empty string."""
    return _sha256(b"").digest()


def _largest_pow2_below(n: int) -> int:
    """Largest power of two strictly less than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(leaf_hashes: Iterable[bytes]) -> bytes:
    """Root of the tree whose leaves have these hashes, in one streaming pass (O(log n) memory)."""
    # stack of (height, hash) of complete subtrees, heights strictly decreasing
    stack: list[tuple[int, bytes]] = []
    count = 0
    for leaf in leaf_hashes:
        count += 1
        height = 0
        node = leaf
        while stack and stack[-1][0] == height:
            node = _sha256(_NODE + stack.pop()[1] + node).digest()
            height += 1
        stack.append((height, node))
    if count == 0:
        return empty_root()
    root = stack.pop()[1]
    while stack:
        root = _sha256(_NODE + stack.pop()[1] + root).digest()
    return root


# Levels 1 .. STORED_FROM - 1 are not kept (they would add 28 of every 32 bytes per leaf the
# interior costs): a node there is rehashed from its at most 2**STORED_FROM leaves when a proof
# needs it, and only the newest node of each is kept, as the left sibling the next append needs.
STORED_FROM = 4


class MerkleTree:
    """Append-only RFC 9162 tree with cached complete-subtree roots.

    ``_leaves`` holds the leaf hashes and ``_upper[j]`` the roots of the complete subtrees of
    ``2**(STORED_FROM + j)`` leaves aligned at multiples of that, as 32-byte slots in one
    bytearray each; ``_edge[k]`` is the newest complete node of level ``k < STORED_FROM``. Not
    thread-safe: the owner serialises appends against reads.
    """

    __slots__ = ("_edge", "_leaves", "_size", "_upper")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._leaves = bytearray()
        self._upper: list[bytearray] = []
        self._edge: list[bytes] = [b""] * STORED_FROM
        self._size = 0
        for leaf in leaf_hashes:
            self.append_hash(leaf)

    @property
    def size(self) -> int:
        return self._size

    def append_data(self, data: bytes) -> int:
        """Hash ``data`` as a leaf and append it; returns its index."""
        return self.append_hash(_sha256(_LEAF + data).digest())

    def append_hash(self, leaf_hash: bytes) -> int:
        """Append an already computed leaf hash; returns its index."""
        if len(leaf_hash) != HASH_SIZE:
            raise AuditLogError(f"leaf hash is {len(leaf_hash)} bytes, expected {HASH_SIZE}")
        index = self._size
        self._leaves += leaf_hash
        node = bytes(leaf_hash)
        pos = index
        level = 0
        # every time the new leaf completes a right child, its parent becomes complete too; a
        # left child below STORED_FROM is kept as its level's edge, the sibling of the next one
        while True:
            if level >= STORED_FROM:
                if len(self._upper) == level - STORED_FROM:
                    self._upper.append(bytearray())
                self._upper[level - STORED_FROM] += node
            if not pos & 1:
                if level < STORED_FROM:
                    self._edge[level] = node
                break
            left = self._edge[level] if level < STORED_FROM else self._complete(level, pos - 1)
            node = _sha256(_NODE + left + node).digest()
            level += 1
            pos >>= 1
        self._size = index + 1
        return index

    def leaf_hash(self, index: int) -> bytes:
        if not 0 <= index < self._size:
            raise AuditLogError(f"leaf index {index} is outside the tree of size {self._size}")
        return bytes(self._leaves[index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def leaf_hashes(self, size: int | None = None) -> bytes:
        """The first ``size`` leaf hashes, concatenated (32 bytes each)."""
        size = self._size if size is None else size
        self._check_size(size)
        return bytes(self._leaves[: size * HASH_SIZE])

    def _complete(self, level: int, pos: int) -> bytes:
        """Root of the complete subtree of ``2**level`` leaves at position ``pos`` of its level."""
        if level >= STORED_FROM:
            slots = self._upper[level - STORED_FROM]
            return bytes(slots[pos * HASH_SIZE : (pos + 1) * HASH_SIZE])
        first = pos << level
        nodes = [
            bytes(self._leaves[i * HASH_SIZE : (i + 1) * HASH_SIZE])
            for i in range(first, first + (1 << level))
        ]
        while len(nodes) > 1:
            nodes = [
                _sha256(_NODE + nodes[i] + nodes[i + 1]).digest() for i in range(0, len(nodes), 2)
            ]
        return nodes[0]

    def _subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) where ``start`` is aligned to a power of two >= end - start."""
        n = end - start
        if n & (n - 1) == 0:
            level = n.bit_length() - 1
            return self._complete(level, start >> level)
        k = _largest_pow2_below(n)
        return hash_children(self._subtree(start, start + k), self._subtree(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """Root hash of the first ``size`` leaves (default: all)."""
        size = self._size if size is None else size
        self._check_size(size)
        if size == 0:
            return empty_root()
        return self._subtree(0, size)

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self._size:
            raise AuditLogError(f"tree size {size} is outside 0..{self._size}")

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3.1 PATH(index, D[0:size])."""
        size = self._size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise AuditLogError(f"leaf index {index} is outside the tree of size {size}")
        proof: list[bytes] = []
        start, n, m = 0, size, index
        while n > 1:
            k = _largest_pow2_below(n)
            if m < k:
                proof.append(self._subtree(start + k, start + n))
                n = k
            else:
                proof.append(self._subtree(start, start + k))
                start, n, m = start + k, n - k, m - k
        proof.reverse()
        return proof

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4.1 PROOF(size1, D[0:size2])."""
        size2 = self._size if size2 is None else size2
        self._check_size(size2)
        if not 0 < size1 <= size2:
            raise AuditLogError(f"no consistency proof from size {size1} to size {size2}")
        proof: list[bytes] = []
        start, n, m, whole = 0, size2, size1, True
        while m != n:
            k = _largest_pow2_below(n)
            if m <= k:
                proof.append(self._subtree(start + k, start + n))
                n = k
            else:
                proof.append(self._subtree(start, start + k))
                start, n, m, whole = start + k, n - k, m - k, False
        if not whole:
            proof.append(self._subtree(start, start + n))
        proof.reverse()
        return proof


def _check_hashes(proof: Sequence[bytes], what: str) -> None:
    for i, node in enumerate(proof):
        if len(node) != HASH_SIZE:
            raise AuditLogError(f"{what} element {i} is {len(node)} bytes, expected {HASH_SIZE}")


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: prove leaf ``index`` with ``leaf_hash`` is in the tree ``root``.

    Returns nothing on success; raises ``AuditLogError`` saying why otherwise.
    """
    if len(leaf_hash) != HASH_SIZE:
        raise AuditLogError(f"leaf hash is {len(leaf_hash)} bytes, expected {HASH_SIZE}")
    if len(root) != HASH_SIZE:
        raise AuditLogError(f"root hash is {len(root)} bytes, expected {HASH_SIZE}")
    if not 0 <= index < size:
        raise AuditLogError(f"leaf index {index} is outside the tree of size {size}")
    _check_hashes(proof, "inclusion proof")
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise AuditLogError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = _sha256(_NODE + p + r).digest()
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = _sha256(_NODE + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditLogError("inclusion proof is shorter than the tree is deep")
    if r != root:
        raise AuditLogError(
            f"inclusion proof for leaf {index} does not lead to the root",
            reason=AuditFailure.BAD_PROOF,
        )


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2: prove the tree ``root2`` of ``size2`` extends ``root1`` of ``size1``.

    Returns nothing on success; raises ``AuditLogError`` saying why otherwise.
    """
    if size1 < 0 or size2 < size1:
        raise AuditLogError(
            f"tree size went from {size1} to {size2}: a log never shrinks",
            reason=AuditFailure.BAD_PROOF,
        )
    if size1 == size2:
        if proof:
            raise AuditLogError("consistency proof between equal sizes must be empty")
        if size1 == 0 and root1 != empty_root():
            raise AuditLogError("root of the empty tree is not SHA-256 of the empty string")
        if root1 != root2:
            raise AuditLogError(
                f"two different roots for the same tree size {size1}",
                reason=AuditFailure.BAD_PROOF,
            )
        return
    if size1 == 0:
        raise AuditLogError("a consistency proof from the empty tree proves nothing")
    if not proof:
        raise AuditLogError(f"consistency proof from {size1} to {size2} is empty")
    _check_hashes(proof, "consistency proof")
    if len(root1) != HASH_SIZE or len(root2) != HASH_SIZE:
        raise AuditLogError(f"root hashes must be {HASH_SIZE} bytes")
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise AuditLogError("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = _sha256(_NODE + c + fr).digest()
            sr = _sha256(_NODE + c + sr).digest()
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = _sha256(_NODE + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise AuditLogError("consistency proof is shorter than the tree is deep")
    if fr != root1:
        raise AuditLogError(
            f"consistency proof does not reproduce the old root (size {size1})",
            reason=AuditFailure.BAD_PROOF,
        )
    if sr != root2:
        raise AuditLogError(
            f"consistency proof does not reproduce the new root (size {size2})",
            reason=AuditFailure.BAD_PROOF,
        )
