/**
 * Sealing: HPKE (RFC 9180) requests to a *verified* enclave, AES-256-GCM requests in a session
 * (protocol 1.4), AES-256-GCM responses and chunks.
 *
 * `sealRequest` takes an `AttestedEnclave`, never a raw key, so data can only be sealed to a key
 * that hardware evidence vouched for; a session's keys come only from a secret sealed that way.
 * Every failure to open is one opaque `DecryptionError`.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { Aes256Gcm, CipherSuite, HkdfSha256 } from "@hpke/core";
import { DhkemX25519HkdfSha256 } from "@hpke/dhkem-x25519";
import { XWing } from "@hpke/hybridkem-x-wing";
import { asBuffer, equalBytes } from "./bytes.js";
import { DecryptionError, ProtocolError } from "./errors.js";
import type { AttestedEnclave } from "./evidence.js";
import {
  GCM_NONCE_LEN,
  GCM_TAG_LEN,
  MODEL_KEY_LEN,
  PROTOCOL_VERSION,
  REQUEST_ID_LEN,
  RESPONSE_KEY_LEN,
  SESSION_SECRET_LEN,
  type SessionKeys,
  Suite,
  chunkAad,
  chunkNonce,
  requestInfo,
  responseAad,
  sessionAad,
  sessionNonce,
  sessionRequestDigest,
} from "./protocol.js";
import { type Msg, decode, encode } from "./proto.js";

export type Random = (n: number) => Buffer;
export const defaultRandom: Random = (n) => randomBytes(n);
export const SEALED_ERROR_KEY = "veil-sealed-error-bin";
export const MAX_ERROR_MESSAGE_BYTES = 1024;
const TAG_LEN = GCM_TAG_LEN;

const suites = new Map<Suite, CipherSuite>();
/** The `@hpke/core` cipher suite for a Veil suite number. */
export function hpkeSuite(suite: Suite): CipherSuite {
  let cs = suites.get(suite);
  if (cs === undefined) {
    const kem = suite === Suite.X25519_SHA256_AES256GCM ? new DhkemX25519HkdfSha256() : new XWing();
    cs = new CipherSuite({ kem, kdf: new HkdfSha256(), aead: new Aes256Gcm() });
    suites.set(suite, cs);
  }
  return cs;
}

/**
 * HPKE base-mode single-shot Seal: `enc ‖ ciphertext`. `ekm` fixes the ephemeral key material
 * (test vectors only: X25519 takes DeriveKeyPair input keying material, X-Wing its 64-byte
 * encapsulation seed); without it the library draws it from the CSPRNG.
 */
export async function hpkeSeal(
  suite: Suite,
  publicKey: Uint8Array,
  info: Uint8Array,
  plaintext: Uint8Array,
  ekm?: Uint8Array,
): Promise<Buffer> {
  const cs = hpkeSuite(suite);
  const recipientPublicKey = await cs.kem.importKey("raw", toArrayBuffer(publicKey), true);
  const params = ekm === undefined
    ? { recipientPublicKey, info: toArrayBuffer(info) }
    : { recipientPublicKey, info: toArrayBuffer(info), ekm: toArrayBuffer(ekm) };
  const sealed = await cs.seal(params, toArrayBuffer(plaintext));
  return Buffer.concat([asBuffer(sealed.enc), asBuffer(sealed.ct)]);
}

function toArrayBuffer(data: Uint8Array): ArrayBuffer {
  const copy = new Uint8Array(data.byteLength);
  copy.set(data);
  return copy.buffer;
}

/** A sealed request and what the client needs to open its answer. */
export interface SealedCall {
  readonly request: Msg;
  readonly method: string;
  readonly requestId: Buffer;
  readonly responseKey: Buffer;
  /** What the call's receipt must name as the request (`requestDigest`), computed when sealed. */
  readonly digest?: string;
  /** The session secret this one-shot request asked the enclave to open a session with (1.4). */
  readonly sessionSecret?: Buffer;
}

export interface SealOptions {
  method: string;
  tenant: string;
  apiKey: string;
  payload: Uint8Array;
  timestampMs: bigint | number;
  suite: Suite;
  random?: Random;
  /** Receipt formats the client verifies (`RequestBody.receipt_version`; 0: v1 only). */
  receiptVersion?: number;
  /** Protocol 1.4: 32 fresh random bytes asking the enclave to open a session (empty: none). */
  sessionSecret?: Uint8Array;
  /** Test vectors only: fixed HPKE ephemeral key material. */
  ekm?: Uint8Array;
}

/** Seal `payload` (a serialized request message) and the API key to a verified enclave. */
export async function sealRequest(enclave: AttestedEnclave, o: SealOptions): Promise<SealedCall> {
  const random = o.random ?? defaultRandom;
  const sessionSecret = Buffer.from(o.sessionSecret ?? []);
  if (sessionSecret.length !== 0 && sessionSecret.length !== SESSION_SECRET_LEN) {
    throw new ProtocolError(`session secret must be ${SESSION_SECRET_LEN} bytes`);
  }
  const requestId = random(REQUEST_ID_LEN);
  const responseKey = random(RESPONSE_KEY_LEN);
  const body = encode("RequestBody", {
    response_key: responseKey,
    api_key: o.apiKey,
    payload: Buffer.from(o.payload),
    receipt_version: o.receiptVersion ?? 0,
    // absent, not empty, when no session is asked for: the body is then a 1.3 client's
    ...(sessionSecret.length > 0 ? { session_secret: sessionSecret } : {}),
  });
  const info = requestInfo({
    method: o.method,
    tenant: o.tenant,
    requestId,
    timestampMs: o.timestampMs,
    claimsDigest: enclave.claimsDigest,
  });
  const sealed = await hpkeSeal(o.suite, enclave.publicKey(o.suite), info, body, o.ekm);
  const request = {
    version: PROTOCOL_VERSION,
    suite: o.suite,
    tenant: o.tenant,
    request_id: requestId,
    timestamp_ms: BigInt(o.timestampMs).toString(),
    claims_digest: enclave.claimsDigest,
    sealed,
  };
  const digest = createHash("sha256").update(sealed).digest("hex");
  return Object.freeze({ request, method: o.method, requestId, responseKey, digest, sessionSecret });
}

export interface SessionSealOptions {
  method: string;
  tenant: string;
  payload: Uint8Array;
  timestampMs: bigint | number;
  /** The digest of the attested claims the session was opened under. */
  claimsDigest: Uint8Array;
  random?: Random;
}

/**
 * Seal `payload` (a serialized request message) in an open session (protocol 1.4): AES-256-GCM
 * only, no HPKE step. `seq` must be new in the session (1, 2, 3, …): it is the nonce and the
 * replay number. The API key and receipt format were given when the session opened.
 */
export function sealSessionRequest(keys: SessionKeys, seq: number, o: SessionSealOptions): SealedCall {
  const random = o.random ?? defaultRandom;
  const requestId = random(REQUEST_ID_LEN);
  const aad = sessionAad({
    method: o.method,
    tenant: o.tenant,
    requestId,
    timestampMs: o.timestampMs,
    claimsDigest: o.claimsDigest,
    sessionId: keys.sessionId,
    seq,
  });
  const sealed = aesGcmEncrypt(keys.requestKey, sessionNonce(keys.requestIv, seq), o.payload, aad);
  const request = {
    version: PROTOCOL_VERSION,
    suite: Suite.X25519_SHA256_AES256GCM,
    tenant: o.tenant,
    request_id: requestId,
    timestamp_ms: BigInt(o.timestampMs).toString(),
    claims_digest: Buffer.from(o.claimsDigest),
    sealed,
    session_id: keys.sessionId,
    seq: String(seq),
  };
  const digest = sessionRequestDigest(keys.sessionId, seq, sealed.subarray(sealed.length - GCM_TAG_LEN));
  return Object.freeze({ request, method: o.method, requestId, responseKey: keys.responseKey, digest });
}

/**
 * What a receipt names as the request: SHA-256 of the sealed bytes (`enc ‖ ciphertext`); in a
 * session (1.4), `sessionRequestDigest` of its id, number and GCM tag.
 */
export function requestDigest(request: Msg): string {
  const sealed = Buffer.from((request["sealed"] as Uint8Array | undefined) ?? []);
  const sessionId = request["session_id"] as Uint8Array | undefined;
  if (sessionId !== undefined && sessionId.byteLength > 0) {
    return sessionRequestDigest(sessionId, BigInt(String(request["seq"] ?? "0")), sealed.subarray(Math.max(0, sealed.length - GCM_TAG_LEN)));
  }
  return createHash("sha256").update(sealed).digest("hex");
}

export function aesGcmEncrypt(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad: Uint8Array): Buffer {
  const cipher = createCipheriv("aes-256-gcm", key, nonce);
  cipher.setAAD(aad);
  return Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
}

/** AES-256-GCM open; throws `DecryptionError` on any defect. */
export function aesGcmDecrypt(key: Uint8Array, nonce: Uint8Array, data: Uint8Array, aad: Uint8Array): Buffer {
  if (key.byteLength !== 32 || nonce.byteLength !== GCM_NONCE_LEN || data.byteLength < TAG_LEN) {
    throw new DecryptionError();
  }
  try {
    const decipher = createDecipheriv("aes-256-gcm", key, nonce);
    decipher.setAAD(aad);
    decipher.setAuthTag(data.subarray(data.byteLength - TAG_LEN));
    return Buffer.concat([decipher.update(data.subarray(0, data.byteLength - TAG_LEN)), decipher.final()]);
  } catch {
    throw new DecryptionError();
  }
}

/** A response that opened: the method's payload, its receipt, and whether it is the last. */
export interface OpenedResponse {
  readonly payload: Buffer;
  readonly receipt: string;
  readonly final: boolean;
  /** Replicated deployments (1.3): the answering replica's serialized `ReplicaCertificate`. */
  readonly replica: Buffer;
  /** Protocol 1.4: the session the request asked for is open, kept this long idle (0: none). */
  readonly sessionIdleSeconds: number;
}

function openBody(call: SealedCall, response: Msg, seq: number): Msg {
  const what = "sealed response could not be opened";
  const requestId = response["request_id"] as Buffer | undefined;
  const nonce = response["nonce"] as Buffer | undefined;
  if (
    requestId === undefined ||
    nonce === undefined ||
    !equalBytes(requestId, call.requestId) ||
    nonce.byteLength !== GCM_NONCE_LEN ||
    String(response["seq"] ?? "0") !== String(seq)
  ) {
    throw new DecryptionError(what);
  }
  const final = response["final"] === true;
  const aad = responseAad(call.method, call.requestId, seq, final);
  const plaintext = aesGcmDecrypt(call.responseKey, nonce, response["ciphertext"] as Buffer, aad);
  try {
    return decode("ResponseBody", plaintext);
  } catch {
    throw new DecryptionError(what);
  }
}

/** Open the enclave's sealed answer at position `seq` (0 for unary calls). */
export function openResponse(call: SealedCall, response: Msg, seq = 0): OpenedResponse {
  const body = openBody(call, response, seq);
  if (body["error"] != null) {
    throw new ProtocolError("enclave sent a sealed error where a response was expected");
  }
  return Object.freeze({
    payload: Buffer.from(body["payload"] as Buffer),
    receipt: String(body["receipt"] ?? ""),
    final: response["final"] === true,
    replica: Buffer.from((body["replica"] as Buffer | undefined) ?? []),
    sessionIdleSeconds: Number(body["session_idle_seconds"] ?? 0),
  });
}

export interface ErrorBody {
  readonly code: string;
  readonly reason: string;
  readonly message: string;
}

/** Open the sealed error (trailer `veil-sealed-error-bin`) of `call` at position `seq`. */
export function openError(call: SealedCall, sealed: Uint8Array, seq = 0): ErrorBody {
  let response: Msg;
  try {
    response = decode("SealedResponse", sealed);
  } catch {
    throw new DecryptionError("sealed error could not be opened");
  }
  const body = openBody(call, response, seq);
  const error = body["error"] as Msg | null;
  if (response["final"] !== true || error == null) {
    throw new DecryptionError("sealed error could not be opened");
  }
  const message = String(error["message"] ?? "");
  if (Buffer.byteLength(message, "utf8") > MAX_ERROR_MESSAGE_BYTES) {
    throw new DecryptionError("sealed error could not be opened");
  }
  return Object.freeze({ code: String(error["code"] ?? ""), reason: String(error["reason"] ?? ""), message });
}

/** Encrypt one upload chunk. */
export function encryptChunk(key: Uint8Array, requestId: Uint8Array, seq: number, final: boolean, data: Uint8Array): Buffer {
  if (key.byteLength !== MODEL_KEY_LEN) {
    throw new ProtocolError(`model key must be ${MODEL_KEY_LEN} bytes, not ${key.byteLength}`);
  }
  return aesGcmEncrypt(key, chunkNonce(seq), data, chunkAad(requestId, seq, final));
}

/** Decrypt one upload chunk (the enclave's side; used by tests). */
export function decryptChunk(key: Uint8Array, requestId: Uint8Array, seq: number, final: boolean, ciphertext: Uint8Array): Buffer {
  return aesGcmDecrypt(key, chunkNonce(seq), ciphertext, chunkAad(requestId, seq, final));
}

/** One line, at most `limit` bytes of UTF-8 (ending in "…" if cut). */
export function boundedMessage(message: string, limit = MAX_ERROR_MESSAGE_BYTES): string {
  const line = message.split(/\s+/).filter((w) => w.length > 0).join(" ");
  const raw = Buffer.from(line, "utf8");
  if (raw.byteLength <= limit) {
    return line;
  }
  const cut = raw.subarray(0, limit - Buffer.byteLength("…")).toString("utf8").replace(/\uFFFD+$/, "");
  return `${cut}…`;
}
