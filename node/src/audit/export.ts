/**
 * Offline verification of an audit export directory, with the verdicts (and messages) of
 * `veil audit verify` (`veil.sdk.audit.export.verify_export`).
 *
 * An export holds `entries.jsonl`, `checkpoint` (a signed note over their tree), `log.pub`, an
 * `attestation/` folder (`evidence.pb`, `nonce.bin`), and `leafhashes.bin` (full export) or
 * `proofs.jsonl` (ranged export).
 */
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { AuditLogError } from "../errors.js";
import { type Checkpoint, parseCheckpoint } from "./checkpoint.js";
import { HASH_SIZE, hashLeaf, rootFromLeafHashes, verifyInclusion } from "./merkle.js";
import { SignedNote, Verifier, b64decode } from "./note.js";

export const ENTRIES_FILE = "entries.jsonl";
export const CHECKPOINT_FILE = "checkpoint";
export const PUBKEY_FILE = "log.pub";
export const LEAF_HASHES_FILE = "leafhashes.bin";
export const PROOFS_FILE = "proofs.jsonl";
export const EVIDENCE_FILE = "attestation/evidence.pb";
export const NONCE_FILE = "attestation/nonce.bin";
/** A replica's export (protocol 1.3): the coordinator's certificate naming its log key. */
export const REPLICA_FILE = "attestation/replica.pb";

/** What a verified export proves: these entries are leaves of this signed tree. */
export interface VerifiedExport {
  readonly path: string;
  readonly vkey: string;
  readonly checkpoint: Checkpoint;
  readonly tenant: string;
  readonly indices: readonly number[];
  readonly full: boolean;
  readonly entryCount: number;
  /** The verified lines of entries.jsonl (canonical JSON records), in log order. */
  readonly lines: readonly Buffer[];
}

export interface VerifyExportOptions {
  /** Pin the log's verifier key (`name+hash+key`). */
  expectVkey?: string;
  /** Verify `attestation/` and return the vkey it binds (see `VeilClient.attestationCheck`). */
  attestationCheck?: (directory: string) => string | Promise<string>;
}

function reject(message: string): AuditLogError {
  return new AuditLogError(`audit export rejected: ${message}`);
}

function read(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (exc) {
    const code = (exc as NodeJS.ErrnoException).code;
    const reason = code === "ENOENT" ? "No such file or directory" : code === "EISDIR" ? "Is a directory" : String(code);
    throw reject(`${what} cannot be read (${reason})`);
  }
}

function splitLines(data: Buffer): [Buffer[], boolean] {
  if (data.length === 0) {
    return [[], false];
  }
  const lines: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < data.length; i++) {
    if (data[i] === 0x0a) {
      lines.push(data.subarray(start, i));
      start = i + 1;
    }
  }
  if (start === data.length) {
    return [lines, false];
  }
  lines.push(data.subarray(start));
  return [lines, true];
}

async function loadKey(directory: string, o: VerifyExportOptions): Promise<Verifier> {
  let published: string;
  try {
    published = new TextDecoder("utf-8", { fatal: true }).decode(read(join(directory, PUBKEY_FILE), PUBKEY_FILE)).trim();
  } catch (exc) {
    if (exc instanceof AuditLogError) throw exc;
    throw reject(`${PUBKEY_FILE} is not UTF-8`);
  }
  let verifier: Verifier;
  try {
    verifier = Verifier.fromVkey(published);
  } catch (exc) {
    throw reject(`${PUBKEY_FILE} is not a valid verifier key: ${(exc as Error).message}`);
  }
  const trusted: [string, string][] = [];
  if (o.attestationCheck !== undefined) {
    trusted.push(["the key bound by the enclave attestation", await o.attestationCheck(directory)]);
  }
  if (o.expectVkey !== undefined) {
    trusted.push(["the expected key", o.expectVkey]);
  }
  if (trusted.length === 0) {
    process.emitWarning(
      "verifying an audit export against its own log.pub: without an expected key or an attestation check this proves internal consistency only",
      { type: "InsecureModeWarning", code: "VEIL_UNPINNED_EXPORT" },
    );
  }
  for (const [what, vkey] of trusted) {
    if (vkey.trim() !== published) {
      throw reject(`${PUBKEY_FILE} is not ${what} (swapped key): '${published}'`);
    }
  }
  return verifier;
}

function loadCheckpoint(directory: string, verifier: Verifier): Checkpoint {
  const raw = read(join(directory, CHECKPOINT_FILE), CHECKPOINT_FILE);
  let note: SignedNote;
  try {
    note = SignedNote.fromText(raw);
  } catch (exc) {
    throw reject(`checkpoint is not a signed note: ${(exc as Error).message}`);
  }
  let text: string;
  try {
    text = note.verify(verifier);
  } catch (exc) {
    throw reject(
      `checkpoint signature does not verify under '${verifier.name}' (checkpoint edited or re-signed by another key): ${(exc as Error).message}`,
    );
  }
  let checkpoint: Checkpoint;
  try {
    checkpoint = parseCheckpoint(text);
  } catch (exc) {
    throw reject(`signed checkpoint body is malformed: ${(exc as Error).message}`);
  }
  if (!checkpoint.origin.startsWith(`${verifier.name}/`)) {
    throw reject(`checkpoint origin '${checkpoint.origin}' is not a log of key '${verifier.name}'`);
  }
  return checkpoint;
}

type Signed = [number, Buffer][];

function locateFirstFailure(lineHashes: Buffer[], cutShort: boolean, signed: Signed): string {
  const key = (h: Buffer) => h.toString("hex");
  const where = new Map<string, number[]>();
  signed.forEach(([, h], q) => where.set(key(h), [...(where.get(key(h)) ?? []), q]));
  const linesAt = new Map<string, number[]>();
  lineHashes.forEach((h, p) => linesAt.set(key(h), [...(linesAt.get(key(h)) ?? []), p]));
  const last = lineHashes.length - 1;
  let p = 0;
  let q = 0;
  while (p < lineHashes.length && q < signed.length) {
    const h = lineHashes[p] as Buffer;
    const [index, want] = signed[q] as [number, Buffer];
    if (h.equals(want)) {
      p += 1;
      q += 1;
      continue;
    }
    const line = p + 1;
    if (cutShort && p === last) {
      return `line ${line} (entry ${index}) is cut short: the export is truncated`;
    }
    const at = where.get(key(h)) ?? [];
    if (at.some((x) => x > q)) {
      const held = (signed[at.find((x) => x > q) as number] as [number, Buffer])[0];
      if ((linesAt.get(key(want)) ?? []).some((x) => x > p)) {
        return `line ${line} holds entry ${held} where entry ${index} belongs (entries reordered)`;
      }
      return `entry ${index} is missing before line ${line} (entry deleted)`;
    }
    if (at.some((x) => x < q)) {
      const held = (signed[Math.max(...at.filter((x) => x < q))] as [number, Buffer])[0];
      return `line ${line} repeats entry ${held} (entry duplicated)`;
    }
    if (p + 1 < lineHashes.length && (lineHashes[p + 1] as Buffer).equals(want)) {
      return `line ${line} is not a leaf of the signed tree (entry inserted)`;
    }
    return `line ${line} (entry ${index}) was edited: its hash is not the signed leaf`;
  }
  if (p < lineHashes.length) {
    const h = lineHashes[p] as Buffer;
    const at = where.get(key(h));
    if (at !== undefined) {
      return `line ${p + 1} repeats entry ${(signed[at[0] as number] as [number, Buffer])[0]} (entry duplicated)`;
    }
    return `line ${p + 1} is beyond the signed entries (entry inserted)`;
  }
  if (q < signed.length) {
    return `the export ends after line ${p}; entries ${(signed[q] as [number, Buffer])[0]}..${(signed[signed.length - 1] as [number, Buffer])[0]} are missing (export truncated)`;
  }
  return "entries do not reproduce the signed root";
}

function signedLeavesFull(directory: string, checkpoint: Checkpoint): Signed {
  const path = join(directory, LEAF_HASHES_FILE);
  const raw = existsSync(path) && statSync(path).isFile() ? readFileSync(path) : Buffer.alloc(0);
  const hashes: Buffer[] = [];
  for (let i = 0; i < raw.length; i += HASH_SIZE) {
    hashes.push(raw.subarray(i, i + HASH_SIZE));
  }
  if (raw.length % HASH_SIZE !== 0 || BigInt(hashes.length) !== checkpoint.size || !rootFromLeafHashes(hashes).equals(checkpoint.rootHash)) {
    throw reject(
      `entries do not reproduce the signed root of tree size ${checkpoint.size}, and ${LEAF_HASHES_FILE} is missing or not for this checkpoint: wrong checkpoint or tampered export`,
    );
  }
  return hashes.map((h, i) => [i, h]);
}

function signedLeavesRanged(directory: string, checkpoint: Checkpoint): Signed {
  const [lines, cut] = splitLines(read(join(directory, PROOFS_FILE), PROOFS_FILE));
  if (cut) {
    throw reject(`${PROOFS_FILE} is cut short (no final newline)`);
  }
  const signed: Signed = [];
  lines.forEach((line, i) => {
    const n = i + 1;
    let index: number;
    let leafHash: Buffer;
    try {
      const obj = JSON.parse(line.toString("utf8")) as Record<string, unknown>;
      if (typeof obj !== "object" || obj === null || !("index" in obj) || !("leaf_hash" in obj) || !("proof" in obj)) {
        throw new Error("missing key");
      }
      leafHash = b64decode(obj["leaf_hash"], "leaf hash");
      const proof = (obj["proof"] as unknown[]).map((x) => b64decode(x, "proof hash"));
      if (typeof obj["index"] !== "number" || !Number.isSafeInteger(obj["index"])) {
        throw new Error("index is not an integer");
      }
      index = obj["index"];
      verifyInclusion(leafHash, index, checkpoint.size, proof, checkpoint.rootHash);
    } catch (exc) {
      throw reject(
        `${PROOFS_FILE} line ${n} does not prove a leaf of the checkpoint (wrong checkpoint or tampered proofs): ${(exc as Error).message}`,
      );
    }
    if (signed.length > 0 && index <= (signed[signed.length - 1] as [number, Buffer])[0]) {
      throw reject(`${PROOFS_FILE} line ${n} is out of log order`);
    }
    signed.push([index, leafHash]);
  });
  return signed;
}

/** Verify an export offline; return what it proves or throw `AuditLogError` (first failure). */
export async function verifyExport(directory: string, options: VerifyExportOptions = {}): Promise<VerifiedExport> {
  const verifier = await loadKey(directory, options);
  const checkpoint = loadCheckpoint(directory, verifier);
  const [lines, cutShort] = splitLines(read(join(directory, ENTRIES_FILE), ENTRIES_FILE));
  const lineHashes = lines.map((l) => hashLeaf(l));
  const full = !existsSync(join(directory, PROOFS_FILE));
  let indices: number[];
  if (full) {
    const ok = !cutShort && BigInt(lineHashes.length) === checkpoint.size && rootFromLeafHashes(lineHashes).equals(checkpoint.rootHash);
    if (!ok) {
      const signed = signedLeavesFull(directory, checkpoint);
      throw reject(locateFirstFailure(lineHashes, cutShort, signed));
    }
    indices = lines.map((_, i) => i);
  } else {
    const signed = signedLeavesRanged(directory, checkpoint);
    const same = !cutShort && signed.length === lineHashes.length && signed.every(([, h], i) => h.equals(lineHashes[i] as Buffer));
    if (!same) {
      throw reject(locateFirstFailure(lineHashes, cutShort, signed));
    }
    indices = signed.map(([i]) => i);
  }
  return Object.freeze({
    path: directory,
    vkey: verifier.vkey,
    checkpoint,
    tenant: checkpoint.origin.slice(verifier.name.length + 1),
    indices: Object.freeze(indices),
    full,
    entryCount: lines.length,
    lines: Object.freeze(lines),
  });
}
