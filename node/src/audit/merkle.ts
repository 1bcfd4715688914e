/** RFC 9162 Merkle tree hashing and proof verification (as `veil.sdk.audit._merkle`). */
import { createHash } from "node:crypto";
import { equalBytes } from "../bytes.js";
import { AuditFailure, AuditLogError } from "../errors.js";

export const HASH_SIZE = 32;

const sha = (...parts: Uint8Array[]): Buffer => {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest();
};
const LEAF = Buffer.from([0]);
const NODE = Buffer.from([1]);

export function hashLeaf(data: Uint8Array): Buffer {
  return sha(LEAF, data);
}

export function hashChildren(left: Uint8Array, right: Uint8Array): Buffer {
  return sha(NODE, left, right);
}

export function emptyRoot(): Buffer {
  return sha();
}

/** Root of the tree whose leaves have these hashes (streaming, O(log n) memory). */
export function rootFromLeafHashes(leafHashes: Iterable<Uint8Array>): Buffer {
  const stack: [number, Buffer][] = [];
  let count = 0;
  for (const leaf of leafHashes) {
    count += 1;
    let height = 0;
    let node: Buffer = Buffer.from(leaf);
    while (stack.length > 0 && (stack[stack.length - 1] as [number, Buffer])[0] === height) {
      node = sha(NODE, (stack.pop() as [number, Buffer])[1], node);
      height += 1;
    }
    stack.push([height, node]);
  }
  if (count === 0) {
    return emptyRoot();
  }
  let root: Buffer = (stack.pop() as [number, Buffer])[1];
  while (stack.length > 0) {
    root = sha(NODE, (stack.pop() as [number, Buffer])[1], root);
  }
  return root;
}

function checkHashes(proof: readonly Uint8Array[], what: string): void {
  proof.forEach((node, i) => {
    if (node.byteLength !== HASH_SIZE) {
      throw new AuditLogError(`${what} element ${i} is ${node.byteLength} bytes, expected ${HASH_SIZE}`);
    }
  });
}

/** RFC 9162 §2.1.3.2; sizes and indices as bigint (up to 2^64). */
export function verifyInclusion(
  leafHash: Uint8Array,
  index: bigint | number,
  size: bigint | number,
  proof: readonly Uint8Array[],
  root: Uint8Array,
): void {
  const idx = BigInt(index);
  const n = BigInt(size);
  if (leafHash.byteLength !== HASH_SIZE) {
    throw new AuditLogError(`leaf hash is ${leafHash.byteLength} bytes, expected ${HASH_SIZE}`);
  }
  if (root.byteLength !== HASH_SIZE) {
    throw new AuditLogError(`root hash is ${root.byteLength} bytes, expected ${HASH_SIZE}`);
  }
  if (!(idx >= 0n && idx < n)) {
    throw new AuditLogError(`leaf index ${idx} is outside the tree of size ${n}`);
  }
  checkHashes(proof, "inclusion proof");
  let fn = idx;
  let sn = n - 1n;
  let r: Buffer = Buffer.from(leafHash);
  for (const p of proof) {
    if (sn === 0n) {
      throw new AuditLogError("inclusion proof is longer than the tree is deep");
    }
    if ((fn & 1n) === 1n || fn === sn) {
      r = sha(NODE, p, r);
      if ((fn & 1n) === 0n) {
        while (!((fn & 1n) === 1n || fn === 0n)) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = sha(NODE, r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) {
    throw new AuditLogError("inclusion proof is shorter than the tree is deep");
  }
  if (!equalBytes(r, root)) {
    throw new AuditLogError(`inclusion proof for leaf ${idx} does not lead to the root`, AuditFailure.BAD_PROOF);
  }
}

/** RFC 9162 §2.1.4.2: the tree `root2` of `size2` extends `root1` of `size1`. */
export function verifyConsistency(
  size1: bigint | number,
  size2: bigint | number,
  root1: Uint8Array,
  root2: Uint8Array,
  proof: readonly Uint8Array[],
): void {
  const s1 = BigInt(size1);
  const s2 = BigInt(size2);
  if (s1 < 0n || s2 < s1) {
    throw new AuditLogError(`tree size went from ${s1} to ${s2}: a log never shrinks`, AuditFailure.BAD_PROOF);
  }
  if (s1 === s2) {
    if (proof.length > 0) {
      throw new AuditLogError("consistency proof between equal sizes must be empty");
    }
    if (s1 === 0n && !equalBytes(root1, emptyRoot())) {
      throw new AuditLogError("root of the empty tree is not SHA-256 of the empty string");
    }
    if (root1.byteLength !== root2.byteLength || !equalBytes(root1, root2)) {
      throw new AuditLogError(`two different roots for the same tree size ${s1}`, AuditFailure.BAD_PROOF);
    }
    return;
  }
  if (s1 === 0n) {
    throw new AuditLogError("a consistency proof from the empty tree proves nothing");
  }
  if (proof.length === 0) {
    throw new AuditLogError(`consistency proof from ${s1} to ${s2} is empty`);
  }
  checkHashes(proof, "consistency proof");
  if (root1.byteLength !== HASH_SIZE || root2.byteLength !== HASH_SIZE) {
    throw new AuditLogError(`root hashes must be ${HASH_SIZE} bytes`);
  }
  const path = [...proof];
  if ((s1 & (s1 - 1n)) === 0n) {
    path.unshift(root1);
  }
  let fn = s1 - 1n;
  let sn = s2 - 1n;
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr: Buffer = Buffer.from(path[0] as Uint8Array);
  let sr: Buffer = fr;
  for (const c of path.slice(1)) {
    if (sn === 0n) {
      throw new AuditLogError("consistency proof is longer than the tree is deep");
    }
    if ((fn & 1n) === 1n || fn === sn) {
      fr = sha(NODE, c, fr);
      sr = sha(NODE, c, sr);
      if ((fn & 1n) === 0n) {
        while (!((fn & 1n) === 1n || fn === 0n)) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      sr = sha(NODE, sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) {
    throw new AuditLogError("consistency proof is shorter than the tree is deep");
  }
  if (!equalBytes(fr, root1)) {
    throw new AuditLogError(`consistency proof does not reproduce the old root (size ${s1})`, AuditFailure.BAD_PROOF);
  }
  if (!equalBytes(sr, root2)) {
    throw new AuditLogError(`consistency proof does not reproduce the new root (size ${s2})`, AuditFailure.BAD_PROOF);
  }
}
