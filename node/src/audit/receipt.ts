/**
 * Receipts: the audit log's signed statement that a request/response pair was logged at a leaf
 * (docs/PROTOCOL.md section 5; `veil.sdk.audit._receipt`).
 *
 * v1: a signed note `veil-audit-receipt/v1\n<JSON>\n`. v2 (protocol 1.2, what this client asks
 * for): the same JSON line unsigned, its RFC 9162 inclusion proof into a batch of receipts, and
 * the batch root signed once (`veil-audit-receipt-batch/v2`).
 */
import { repr } from "../bytes.js";
import { AuditFailure, AuditLogError } from "../errors.js";
import type { Checkpoint } from "./checkpoint.js";
import { HASH_SIZE, hashLeaf, verifyInclusion } from "./merkle.js";
import { SignedNote, type Verifier, b64decode } from "./note.js";

export const RECEIPT_HEADER = "veil-audit-receipt/v1";
export const RECEIPT_V2_HEADER = "veil-audit-receipt/v2";
export const BATCH_HEADER = "veil-audit-receipt-batch/v2";
const FIELDS = ["leaf_hash", "leaf_index", "log", "model_digest", "request_digest", "response_digest", "tenant", "time"];
const TENANT = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z$/;

/** JSON with sorted keys and no whitespace (RFC 8785 on the values receipts hold). */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== "object") {
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) {
    return `[${value.map(canonicalJson).join(",")}]`;
  }
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(",")}}`;
}

/** What the log signed: which request/response/model, for whom, when, and at which leaf. */
export interface Receipt {
  readonly log: string;
  readonly tenant: string;
  readonly leafIndex: number;
  readonly leafHash: Buffer;
  readonly time: string;
  readonly requestDigest: string;
  readonly responseDigest: string;
  readonly modelDigest: string | null;
}

export function receiptJsonLine(r: Receipt): string {
  return canonicalJson({
    log: r.log,
    tenant: r.tenant,
    leaf_index: r.leafIndex,
    leaf_hash: r.leafHash.toString("base64"),
    time: r.time,
    request_digest: r.requestDigest,
    response_digest: r.responseDigest,
    model_digest: r.modelDigest,
  });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Parse a receipt's JSON line: exactly the eight keys, right types, canonical form. */
export function parseReceiptLine(line: string): Receipt {
  let obj: unknown;
  try {
    obj = JSON.parse(line);
  } catch {
    throw new AuditLogError("receipt payload is not valid JSON");
  }
  if (!isObject(obj) || Object.keys(obj).sort().join(",") !== FIELDS.join(",")) {
    throw new AuditLogError("receipt payload does not have exactly the expected fields");
  }
  const { log, tenant, leaf_index, leaf_hash, time, request_digest, response_digest, model_digest } = obj;
  if (typeof leaf_hash !== "string") {
    throw new AuditLogError("receipt leaf hash must be base64 text");
  }
  if (typeof tenant !== "string" || !TENANT.test(tenant)) {
    throw new AuditLogError(`tenant ${repr(tenant)} must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}`);
  }
  if (typeof time !== "string" || !TIME.test(time) || Number.isNaN(Date.parse(time))) {
    throw new AuditLogError(`audit time ${repr(time)} is not RFC 3339 UTC (…Z)`);
  }
  if (typeof leaf_index !== "number" || !Number.isSafeInteger(leaf_index) || leaf_index < 0) {
    throw new AuditLogError("receipt leaf index must be an integer in range");
  }
  const hash = b64decode(leaf_hash, "receipt leaf hash");
  if (hash.length !== HASH_SIZE) {
    throw new AuditLogError(`receipt leaf hash is ${hash.length} bytes`);
  }
  for (const [name, value] of [["log", log], ["request_digest", request_digest], ["response_digest", response_digest]] as const) {
    if (typeof value !== "string" || value.length === 0) {
      throw new AuditLogError(`receipt ${name} must be a non-empty string`);
    }
  }
  if (model_digest !== null && typeof model_digest !== "string") {
    throw new AuditLogError("receipt model_digest must be a string or null");
  }
  const receipt: Receipt = Object.freeze({
    log: log as string,
    tenant,
    leafIndex: leaf_index,
    leafHash: hash,
    time,
    requestDigest: request_digest as string,
    responseDigest: response_digest as string,
    modelDigest: model_digest as string | null,
  });
  if (receiptJsonLine(receipt) !== line) {
    throw new AuditLogError("receipt payload is not in canonical form");
  }
  return receipt;
}

function parseV1(text: string): Receipt {
  const nl = text.indexOf("\n");
  const header = nl < 0 ? text : text.slice(0, nl);
  const rest = nl < 0 ? "" : text.slice(nl + 1);
  if (header !== RECEIPT_HEADER || nl < 0 || !rest.endsWith("\n") || rest.slice(0, -1).includes("\n")) {
    throw new AuditLogError(`receipt text is not '${RECEIPT_HEADER}' plus one JSON line`);
  }
  return parseReceiptLine(rest.slice(0, -1));
}

function openV2(text: string, logKey: Verifier): Receipt {
  const parts: string[] = [];
  let rest = text;
  for (let i = 0; i < 4; i++) {
    const nl = rest.indexOf("\n");
    if (nl < 0) break;
    parts.push(rest.slice(0, nl));
    rest = rest.slice(nl + 1);
  }
  parts.push(rest);
  if (parts.length !== 5 || parts[0] !== RECEIPT_V2_HEADER || parts[3] !== "") {
    throw new AuditLogError(`receipt is not '${RECEIPT_V2_HEADER}', a JSON line, a proof, a note`);
  }
  const [, line, position, , note] = parts as [string, string, string, string, string];
  const receipt = parseReceiptLine(line);
  const batch = SignedNote.fromText(note).verify(logKey);
  const rows = batch.split("\n");
  if (rows.length !== 5 || rows[0] !== BATCH_HEADER || rows[4] !== "") {
    throw new AuditLogError("receipt batch note is malformed");
  }
  if (rows[1] !== receipt.log) {
    throw new AuditLogError("receipt batch note is for another log", AuditFailure.MISMATCH);
  }
  const countText = rows[2] as string;
  if (!/^(?:0|[1-9][0-9]*)$/.test(countText)) {
    throw new AuditLogError("receipt batch size is not a decimal integer");
  }
  const count = BigInt(countText);
  const root = b64decode(rows[3], "receipt batch root");
  let obj: unknown;
  try {
    obj = JSON.parse(position);
  } catch {
    throw new AuditLogError("receipt batch position is not valid JSON");
  }
  if (!isObject(obj) || Object.keys(obj).sort().join(",") !== "batch_index,proof") {
    throw new AuditLogError("receipt batch position must have batch_index and proof");
  }
  const index = obj["batch_index"];
  const proof = obj["proof"];
  if (typeof index !== "number" || !Number.isSafeInteger(index) || index < 0 || BigInt(index) >= count) {
    throw new AuditLogError("receipt batch index is outside the batch");
  }
  if (!Array.isArray(proof) || !proof.every((h) => typeof h === "string")) {
    throw new AuditLogError("receipt batch proof must be a list of base64 hashes");
  }
  if (canonicalJson(obj) !== position) {
    throw new AuditLogError("receipt batch position is not in canonical form");
  }
  const hashes = (proof as string[]).map((h) => b64decode(h, "receipt batch proof"));
  verifyInclusion(hashLeaf(Buffer.from(line, "utf8")), index, count, hashes, root);
  return receipt;
}

export interface ExpectedExchange {
  tenant?: string;
  requestDigest?: string;
  responseDigest?: string;
}

/** Verify a receipt (v1: its own signature; v2: its batch's) and return what it proves. */
export function verifyReceipt(note: string, logKey: Verifier, expected: ExpectedExchange = {}): Receipt {
  const receipt = note.startsWith(`${RECEIPT_V2_HEADER}\n`)
    ? openV2(note, logKey)
    : parseV1(SignedNote.fromText(note).verify(logKey));
  if (!receipt.log.startsWith(`${logKey.name}/`)) {
    throw new AuditLogError(
      `receipt names log ${repr(receipt.log)}, not a log of ${repr(logKey.name)}`,
      AuditFailure.MISMATCH,
    );
  }
  const checks: [string, string | undefined, string][] = [
    ["tenant", expected.tenant, receipt.tenant],
    ["request_digest", expected.requestDigest, receipt.requestDigest],
    ["response_digest", expected.responseDigest, receipt.responseDigest],
  ];
  for (const [name, want, got] of checks) {
    if (want !== undefined && want !== got) {
      throw new AuditLogError(`receipt ${name} does not match this exchange`, AuditFailure.MISMATCH);
    }
  }
  return receipt;
}

/** Prove the receipt's leaf is in a (verified) checkpoint's tree. */
export function checkReceiptInclusion(receipt: Receipt, checkpoint: Checkpoint, proof: readonly Uint8Array[]): void {
  if (checkpoint.origin !== receipt.log) {
    throw new AuditLogError(
      `receipt is for log ${repr(receipt.log)} but the checkpoint is for ${repr(checkpoint.origin)}`,
    );
  }
  if (BigInt(receipt.leafIndex) >= checkpoint.size) {
    throw new AuditLogError(`receipt leaf ${receipt.leafIndex} is not yet in the tree of size ${checkpoint.size}`);
  }
  verifyInclusion(receipt.leafHash, receipt.leafIndex, checkpoint.size, proof, checkpoint.rootHash);
}
