/** C2SP tlog-checkpoint bodies and their verification (as `veil.sdk.audit._checkpoint`). */
import { repr } from "../bytes.js";
import { AuditLogError } from "../errors.js";
import { HASH_SIZE, verifyConsistency } from "./merkle.js";
import { SignedNote, type Verifier, b64decode } from "./note.js";

const SIZE = /^(?:0|[1-9][0-9]{0,19})$/;

/** A tree head: the log's origin, its size and its RFC 9162 root hash. */
export interface Checkpoint {
  readonly origin: string;
  readonly size: bigint;
  readonly rootHash: Buffer;
  readonly extensions: readonly string[];
}

/** Parse a checkpoint body (the text of the note, without signatures). */
export function parseCheckpoint(body: string): Checkpoint {
  if (!body.endsWith("\n")) {
    throw new AuditLogError("checkpoint body does not end with a newline");
  }
  const lines = body.slice(0, -1).split("\n");
  if (lines.length < 3) {
    throw new AuditLogError(`checkpoint body has ${lines.length} lines, expected at least 3`);
  }
  const [origin, sizeText, rootB64, ...extensions] = lines as [string, string, string, ...string[]];
  if (!SIZE.test(sizeText)) {
    throw new AuditLogError(`checkpoint tree size ${repr(sizeText)} is not a decimal number`);
  }
  const rootHash = b64decode(rootB64, "checkpoint root hash");
  const size = BigInt(sizeText);
  if (origin.length === 0) {
    throw new AuditLogError("checkpoint origin must be one non-empty line");
  }
  if (size >= 2n ** 64n) {
    throw new AuditLogError(`checkpoint tree size ${size} is out of range`);
  }
  if (rootHash.length !== HASH_SIZE) {
    throw new AuditLogError(`checkpoint root hash is ${rootHash.length} bytes`);
  }
  if (extensions.some((e) => e.length === 0)) {
    throw new AuditLogError("checkpoint extension lines must be non-empty single lines");
  }
  return Object.freeze({ origin, size, rootHash, extensions: Object.freeze(extensions) });
}

/** Verify a signed checkpoint note; `origin`, when given, must be its origin line. */
export function verifyCheckpoint(note: string | Uint8Array, verifiers: Verifier | readonly Verifier[], origin?: string): Checkpoint {
  const text = SignedNote.fromText(note).verify(verifiers);
  const checkpoint = parseCheckpoint(text);
  if (origin !== undefined && checkpoint.origin !== origin) {
    throw new AuditLogError(`checkpoint is for log ${repr(checkpoint.origin)}, expected ${repr(origin)}`);
  }
  return checkpoint;
}

/** Prove `newer` extends `old` (same origin, append-only). */
export function verifyCheckpointConsistency(old: Checkpoint, newer: Checkpoint, proof: readonly Uint8Array[]): void {
  if (old.origin !== newer.origin) {
    throw new AuditLogError(`checkpoints are for different logs: ${repr(old.origin)}, ${repr(newer.origin)}`);
  }
  verifyConsistency(old.size, newer.size, old.rootHash, newer.rootHash, proof);
}
