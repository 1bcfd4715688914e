/**
 * Byte-level building blocks of Veil's wire protocol, version 1 (docs/PROTOCOL.md): pure
 * functions, the same bytes as `veil.sdk.protocol`.
 */
import { createHash } from "node:crypto";
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

const LABEL_REQUEST = Buffer.from("veil/v1/request");
const LABEL_RESPONSE = Buffer.from("veil/v1/response");
const LABEL_CHUNK = Buffer.from("veil/v1/chunk");

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
