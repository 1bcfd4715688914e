/**
 * Byte-level building blocks of Veil's wire protocol, version 1 (docs/PROTOCOL.md): pure
 * functions, the same bytes as `veil.sdk.protocol`.
 */
import { createHash, hkdfSync } from "node:crypto";
import { concat, i64be, u16be, u64be } from "./bytes.js";
import { ProtocolError } from "./errors.js";

export const PROTOCOL_VERSION = 1;
export const REQUEST_ID_LEN = 16;
export const RESPONSE_KEY_LEN = 32;
export const MODEL_KEY_LEN = 32;
export const NONCE_LEN = 32;
export const GCM_NONCE_LEN = 12;
export const MLKEM768_PUBLIC_LEN = 1184;
export const X25519_PUBLIC_LEN = 32;
/** Sessions (protocol 1.4): a 32-byte secret sealed once with HPKE keys every later request. */
export const SESSION_SECRET_LEN = 32;
export const SESSION_ID_LEN = 16;
export const GCM_TAG_LEN = 16;
/**
 * Requests per session: their nonces come from the number (never reused), the responses' nonces
 * are random, so a session stays within 2^32 messages per key.
 */
export const MAX_SESSION_SEQ = 2 ** 32 - 1;

const LABEL_REQUEST = Buffer.from("veil/v1/request");
const LABEL_RESPONSE = Buffer.from("veil/v1/response");
const LABEL_CHUNK = Buffer.from("veil/v1/chunk");
const LABEL_SESSION = Buffer.from("veil/v1/session");
const LABEL_SESSION_REQUEST = Buffer.from("veil/v1/session-request");
const LABEL_SESSION_DIGEST = Buffer.from("veil/v1/session-request-digest");

/** HPKE suites requests are sealed with; numbers match `veil.v1.SealingSuite`. */
export const Suite = {
  /** DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM. */
  X25519_SHA256_AES256GCM: 1,
  /** X-Wing (ML-KEM-768 + X25519, draft-connolly-cfrg-xwing-kem-06) / HKDF-SHA256 / AES-256-GCM. */
  MLKEM768X25519_SHA256_AES256GCM: 2,
} as const;
export type Suite = (typeof Suite)[keyof typeof Suite];

/** Public key length for each suite. */
export function publicKeyLength(suite: Suite): number {
  return suite === Suite.X25519_SHA256_AES256GCM
    ? X25519_PUBLIC_LEN
    : MLKEM768_PUBLIC_LEN + X25519_PUBLIC_LEN;
}

/** Full gRPC method names; each is bound into the sealing context. */
export const Method = {
  INFER: "/veil.v1.InferenceService/Infer",
  UPLOAD_MODEL: "/veil.v1.ModelService/UploadModel",
  LIST_MODELS: "/veil.v1.ModelService/ListModels",
  DELETE_MODEL: "/veil.v1.ModelService/DeleteModel",
  AUDIT_CHECKPOINT: "/veil.v1.AuditService/GetCheckpoint",
  AUDIT_INCLUSION: "/veil.v1.AuditService/GetInclusionProof",
  AUDIT_CONSISTENCY: "/veil.v1.AuditService/GetConsistencyProof",
  AUDIT_EXPORT: "/veil.v1.AuditService/ExportAudit",
  AUDIT_EXPORT_STREAM: "/veil.v1.AuditService/ExportAuditStream",
  UPLOAD_DATASET: "/veil.v1.TrainingService/UploadDataset",
  TRAIN: "/veil.v1.TrainingService/Train",
  GET_BUDGET: "/veil.v1.TrainingService/GetBudget",
  EMBED_WATERMARK: "/veil.v1.WatermarkService/EmbedWatermark",
  VERIFY_WATERMARK: "/veil.v1.WatermarkService/VerifyWatermark",
} as const;
export type Method = (typeof Method)[keyof typeof Method];
export const ATTEST_METHOD = "/veil.v1.AttestationService/GetAttestation";

/** `LP(x) = u16be(len(x)) ‖ x`. */
export function lp(data: Uint8Array): Buffer {
  if (data.byteLength > 0xffff) {
    throw new ProtocolError("a bound field is longer than 65535 bytes");
  }
  return concat(u16be(data.byteLength), data);
}

export interface RequestInfoFields {
  method: string;
  tenant: string;
  requestId: Uint8Array;
  timestampMs: bigint | number;
  claimsDigest: Uint8Array;
}

/** HPKE `info` of a sealed request. */
export function requestInfo(f: RequestInfoFields): Buffer {
  return concat(
    lp(LABEL_REQUEST),
    lp(Buffer.from(f.method, "utf8")),
    lp(Buffer.from(f.tenant, "utf8")),
    lp(f.requestId),
    lp(i64be(f.timestampMs)),
    lp(f.claimsDigest),
  );
}

/** AES-GCM AAD of a sealed response (or sealed error) at position `seq`. */
export function responseAad(method: string, requestId: Uint8Array, seq: bigint | number, final: boolean): Buffer {
  return concat(
    lp(LABEL_RESPONSE),
    lp(Buffer.from(method, "utf8")),
    lp(requestId),
    u64be(seq),
    Buffer.from([final ? 1 : 0]),
  );
}

/** An upload chunk's nonce: 4 zero bytes ‖ u64be(seq). */
export function chunkNonce(seq: bigint | number): Buffer {
  return concat(Buffer.alloc(4), u64be(seq));
}

/** An upload chunk's AAD. */
export function chunkAad(requestId: Uint8Array, seq: bigint | number, final: boolean): Buffer {
  return concat(lp(LABEL_CHUNK), lp(requestId), u64be(seq), Buffer.from([final ? 1 : 0]));
}

/** What both ends derive from a session secret (protocol 1.4, docs/PROTOCOL.md 4.5). */
export class SessionKeys {
  constructor(
    /** 16 bytes, sent in clear with each request of the session. */
    readonly sessionId: Buffer,
    /** AES-256-GCM, client to enclave; nonce = `requestIv` XOR seq. */
    readonly requestKey: Buffer,
    /** 12 bytes. */
    readonly requestIv: Buffer,
    /** AES-256-GCM, enclave to client; random nonces, as one-shot responses. */
    readonly responseKey: Buffer,
  ) {
    Object.freeze(this);
  }

  /** Never print keys: only the session id (it travels in clear anyway). */
  toString(): string {
    return `SessionKeys(sessionId=${this.sessionId.toString("hex")})`;
  }

  toJSON(): string {
    return this.toString();
  }

  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return this.toString();
  }
}

/**
 * `HKDF-SHA256(salt = claims digest, ikm = secret, info = LP("veil/v1/session") ‖ LP(tenant), 92)`.
 * The secret reaches the enclave only inside an HPKE-sealed request to the attested key, so only
 * the client and that enclave can derive these; binding the claims digest and tenant makes a
 * session useless under any other attestation or tenant.
 */
export function sessionKeys(secret: Uint8Array, o: { tenant: string; claimsDigest: Uint8Array }): SessionKeys {
  if (secret.byteLength !== SESSION_SECRET_LEN) {
    throw new ProtocolError(`session secret must be ${SESSION_SECRET_LEN} bytes`);
  }
  const info = concat(lp(LABEL_SESSION), lp(Buffer.from(o.tenant, "utf8")));
  const okm = Buffer.from(hkdfSync("sha256", secret, o.claimsDigest, info, SESSION_ID_LEN + 32 + GCM_NONCE_LEN + 32));
  return new SessionKeys(okm.subarray(0, 16), okm.subarray(16, 48), okm.subarray(48, 60), okm.subarray(60, 92));
}

function checkSeq(seq: bigint | number): bigint {
  const n = BigInt(seq);
  if (n < 1n || n > BigInt(MAX_SESSION_SEQ)) {
    throw new ProtocolError(`session request number must be in 1..${MAX_SESSION_SEQ}`);
  }
  return n;
}

/** A session request's AES-GCM nonce: the request IV XOR the 96-bit big-endian `seq`. */
export function sessionNonce(iv: Uint8Array, seq: bigint | number): Buffer {
  if (iv.byteLength !== GCM_NONCE_LEN) {
    throw new ProtocolError(`session request IV must be ${GCM_NONCE_LEN} bytes`);
  }
  const nonce = Buffer.from(iv);
  const low = u64be(checkSeq(seq));
  for (let i = 0; i < 8; i++) {
    nonce[4 + i] = (nonce[4 + i] as number) ^ (low[i] as number);
  }
  return nonce;
}

export interface SessionAadFields extends RequestInfoFields {
  sessionId: Uint8Array;
  seq: bigint | number;
}

/** AES-GCM AAD of a session request: every clear field of the envelope. */
export function sessionAad(f: SessionAadFields): Buffer {
  return concat(
    lp(LABEL_SESSION_REQUEST),
    lp(Buffer.from(f.method, "utf8")),
    lp(Buffer.from(f.tenant, "utf8")),
    lp(f.requestId),
    lp(i64be(f.timestampMs)),
    lp(f.claimsDigest),
    lp(f.sessionId),
    u64be(checkSeq(f.seq)),
  );
}

/** How receipts name a session request: hex SHA-256(label ‖ LP(session id) ‖ u64be(seq) ‖ LP(GCM tag)). */
export function sessionRequestDigest(sessionId: Uint8Array, seq: bigint | number, tag: Uint8Array): string {
  return createHash("sha256")
    .update(concat(lp(LABEL_SESSION_DIGEST), lp(sessionId), u64be(seq), lp(tag)))
    .digest("hex");
}

/** `REPORT_DATA = SHA-512(nonce ‖ SHA-256(claims))`. */
export function reportDataFor(nonce: Uint8Array, commitment: Uint8Array): Buffer {
  return createHash("sha512").update(nonce).update(commitment).digest();
}

/** `SHA-256(claims)` over the exact bytes received. */
export function claimsDigest(claims: Uint8Array): Buffer {
  return createHash("sha256").update(claims).digest();
}

export function sha256(data: Uint8Array): Buffer {
  return createHash("sha256").update(data).digest();
}

export function sha256Hex(data: Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}
