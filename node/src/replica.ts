/**
 * Replicated deployments (protocol 1.3, docs/PROTOCOL.md "Replicas"; `veil.sdk.replicas`).
 *
 * When the attested claims carry `manifest_sha256`, their `audit_log_key` is the coordinator's
 * key, and every final response carries a `ReplicaCertificate`: the coordinator's signed
 * statement naming the answering replica's own audit log key, with that replica's evidence. The
 * client verifies the certificate (and re-verifies the replica's evidence under its own policy)
 * and then the receipt under the certified replica log key. Everything fails closed.
 */
import { createPublicKey, randomBytes, verify as cryptoVerify } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import protobuf from "protobufjs";
import { equalBytes } from "./bytes.js";
import { AttestationError, AttestationFailure, AuditFailure, AuditLogError, ConfigError } from "./errors.js";
import { type AttestedEnclave, type Evidence, evidenceFromMessage, verifyEnclave } from "./evidence.js";
import { Verifier } from "./audit/note.js";
import { canonicalJson } from "./audit/receipt.js";
import type { AttestationPolicy } from "./policy.js";
import { type Msg, decode, methodDefinitions } from "./proto.js";
import { NONCE_LEN, sha256 } from "./protocol.js";

export const MANIFEST_CONTEXT = "veil-manifest/v1\n";
export const CERTIFICATE_CONTEXT = "veil-replica-certificate/v1\n";
const STATEMENT_KEYS = [
  "challenge", "evidence_sha256", "issued_at_ms", "log_key", "log_origin", "manifest_sha256",
  "measurement", "replica", "tee", "version",
];
const ED25519_SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");
const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** A replica as its coordinator certified it: who answered, and which key signs its log. */
export interface ReplicaIdentity {
  readonly replica: string;
  readonly tee: string;
  readonly measurement: string;
  readonly logOrigin: string;
  readonly logKey: Buffer;
  readonly manifestSha256: Buffer;
  readonly challenge: Buffer;
  readonly evidenceSha256: Buffer;
  readonly issuedAt: Date;
  readonly evidence: Evidence;
  /** The serialized `ReplicaCertificate`, as received (saved in exports). */
  readonly certificate: Buffer;
}

/** The note verifier of a certified replica's audit log. */
export function replicaLogVerifier(identity: ReplicaIdentity): Verifier {
  try {
    return Verifier.fromPublicKey(identity.logOrigin, identity.logKey);
  } catch (exc) {
    throw new AttestationError(
      AttestationFailure.MALFORMED,
      `replica certificate names a bad log key: ${(exc as Error).message}`,
    );
  }
}

function ed25519Verifies(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.byteLength !== 32) return false;
  try {
    const key = createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, publicKey]), format: "der", type: "spki" });
    return cryptoVerify(null, message, key, signature);
  } catch {
    return false;
  }
}

/**
 * `AttestationEvidence` serialized as protobuf's deterministic form (Python's
 * `SerializeToString(deterministic=True)`): fields in number order, proto3 defaults left out,
 * map entries sorted by key bytes.
 */
export function deterministicEvidence(msg: Msg): Buffer {
  const w = protobuf.Writer.create();
  const bytes = (tag: number, value: Uint8Array | undefined, always = false) => {
    if (value !== undefined && (always || value.byteLength > 0)) w.uint32(tag).bytes(value);
  };
  const tee = String(msg["tee"] ?? "");
  if (tee) w.uint32(10).string(tee);
  bytes(18, msg["report"] as Buffer | undefined);
  for (const c of (msg["cert_chain"] as Buffer[] | undefined) ?? []) bytes(26, c, true);
  bytes(34, msg["claims"] as Buffer | undefined);
  for (const gpu of (msg["gpus"] as Msg[] | undefined) ?? []) {
    w.uint32(42).fork();
    bytes(10, gpu["spdm"] as Buffer | undefined);
    bytes(18, gpu["cert_chain_pem"] as Buffer | undefined);
    w.ldelim();
  }
  const collateral = Object.entries((msg["collateral"] as Record<string, Buffer> | undefined) ?? {});
  collateral.sort(([a], [b]) => Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8")));
  for (const [key, value] of collateral) {
    w.uint32(50).fork().uint32(10).string(key).uint32(18).bytes(value).ldelim();
  }
  return Buffer.from(w.finish());
}

/** Python's `bytes.fromhex`: pairs of hex digits, ASCII whitespace allowed between pairs. */
function fromHex(value: unknown): Buffer {
  if (typeof value !== "string") throw new Error("fromhex() argument must be str");
  const out: number[] = [];
  let i = 0;
  while (i < value.length) {
    if (/[ \t\n\r\v\f]/.test(value[i] as string)) {
      i += 1;
      continue;
    }
    const pair = value.slice(i, i + 2);
    if (!/^[0-9A-Fa-f]{2}$/.test(pair)) {
      throw new Error(`non-hexadecimal number found in fromhex() arg at position ${/^[0-9A-Fa-f]/.test(pair) ? i + 1 : i}`);
    }
    out.push(parseInt(pair, 16));
    i += 2;
  }
  return Buffer.from(out);
}

function statementOf(raw: Buffer): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  } catch {
    throw new Error("replica certificate is not JSON");
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc) || !equalBytes(Buffer.from(canonicalJson(doc), "utf8"), raw)) {
    throw new Error("replica certificate is not canonical JSON");
  }
  const obj = doc as Record<string, unknown>;
  if (Object.keys(obj).sort().join(",") !== STATEMENT_KEYS.join(",") || obj["version"] !== 1) {
    throw new Error("unknown keys");
  }
  return obj;
}

function text(value: unknown): string {
  if (typeof value === "string") return value;
  if (typeof value === "number") return String(value);
  throw new Error("statement fields must be strings");
}

function integer(value: unknown): number {
  if (typeof value === "number" && Number.isSafeInteger(value)) return value;
  if (typeof value === "string" && /^\s*[+-]?\d+\s*$/.test(value) && Number.isSafeInteger(Number(value))) return Number(value);
  throw new Error("issued_at_ms must be an integer");
}

export interface VerifyCertificateOptions {
  /** The attested coordinator key: the shared claims' `audit_log_key`. */
  coordinatorKey: Uint8Array;
  /** The shared claims' `manifest_sha256`. */
  manifestSha256: Uint8Array;
  /** With `policy` (and `now`), also re-verify the replica's own evidence. */
  policy?: AttestationPolicy;
  now?: Date;
}

/**
 * Verify a serialized `ReplicaCertificate` under the attested coordinator key
 * (`verify_replica_certificate`): signature, canonical statement, manifest, evidence digest,
 * and, with a policy, the replica's evidence answering the certified challenge, with the
 * measurement and log key the statement names.
 */
export function verifyReplicaCertificate(raw: Uint8Array, o: VerifyCertificateOptions): ReplicaIdentity {
  let msg: Msg;
  try {
    msg = decode("ReplicaCertificate", raw);
  } catch {
    throw new AuditLogError("replica certificate is malformed");
  }
  const statement = Buffer.from((msg["statement"] as Buffer | undefined) ?? []);
  const signature = Buffer.from((msg["signature"] as Buffer | undefined) ?? []);
  const signed = Buffer.concat([Buffer.from(CERTIFICATE_CONTEXT, "utf8"), statement]);
  if (!ed25519Verifies(o.coordinatorKey, signed, signature)) {
    throw new AuditLogError("replica certificate is not signed by the attested coordinator", AuditFailure.BAD_SIGNATURE);
  }
  const evidenceMsg = (msg["evidence"] as Msg | null | undefined) ?? {};
  let identity: ReplicaIdentity;
  try {
    const doc = statementOf(statement);
    const logKey = doc["log_key"];
    if (typeof logKey !== "string" || !B64.test(logKey)) {
      throw new Error("Only base64 data is allowed");
    }
    identity = Object.freeze({
      replica: text(doc["replica"]),
      tee: text(doc["tee"]),
      measurement: text(doc["measurement"]),
      logOrigin: text(doc["log_origin"]),
      logKey: Buffer.from(logKey, "base64"),
      manifestSha256: fromHex(doc["manifest_sha256"]),
      challenge: fromHex(doc["challenge"]),
      evidenceSha256: fromHex(doc["evidence_sha256"]),
      issuedAt: new Date(integer(doc["issued_at_ms"])),
      evidence: evidenceFromMessage(evidenceMsg),
      certificate: Buffer.from(raw),
    });
  } catch (exc) {
    throw new AuditLogError(`replica certificate is malformed: ${(exc as Error).message}`);
  }
  const bad = (message: string) => new AuditLogError(`replica certificate refused: ${message}`, AuditFailure.MISMATCH);
  if (!equalBytes(identity.manifestSha256, o.manifestSha256)) {
    throw bad("it was issued under another manifest");
  }
  if (!equalBytes(sha256(deterministicEvidence(evidenceMsg)), identity.evidenceSha256)) {
    throw bad("the evidence it carries is not the evidence it names");
  }
  if (o.policy !== undefined) {
    if (o.now === undefined) {
      throw new ConfigError("verifying a replica's evidence needs the current time");
    }
    const attested = verifyEnclave(identity.evidence, {
      nonce: identity.challenge,
      policy: o.policy,
      now: o.now,
      challengeIssuedAt: identity.issuedAt,
      requireUnexpired: false,
    });
    if (attested.measurement !== identity.measurement || attested.tee !== identity.tee) {
      throw bad("its evidence reports another measurement");
    }
    if (!equalBytes(attested.claims.auditLogKey, identity.logKey) || attested.claims.auditLogOrigin !== identity.logOrigin) {
      throw bad("its evidence binds another audit log key");
    }
  }
  return identity;
}

const MANIFEST_KEYS = ["deployment", "epoch_seconds", "policy", "version"];

/**
 * A deployment's manifest, as its owner signed it: name, replica policy (policy-file TOML text,
 * as `veil policy` writes it; this client carries it without interpreting it), key epoch.
 */
export interface Manifest {
  readonly raw: Buffer;
  readonly deployment: string;
  readonly policyToml: string;
  readonly epochSeconds: number;
  readonly sha256: Buffer;
}

/** Parse a manifest's canonical JSON (`Manifest.parse`); defects are `ConfigError`s. */
export function parseManifest(raw: Uint8Array): Manifest {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  } catch {
    throw new ConfigError("manifest is not JSON");
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc) || !equalBytes(Buffer.from(canonicalJson(doc), "utf8"), raw)) {
    throw new ConfigError("manifest is not canonical JSON");
  }
  const obj = doc as Record<string, unknown>;
  if (Object.keys(obj).sort().join(",") !== MANIFEST_KEYS.join(",") || obj["version"] !== 1) {
    throw new ConfigError(`manifest must have exactly the keys [${MANIFEST_KEYS.map((k) => `'${k}'`).join(", ")}]`);
  }
  const { deployment, policy, epoch_seconds: seconds } = obj;
  if (typeof deployment !== "string" || !deployment || deployment.includes("/") || deployment.includes("\n")) {
    throw new ConfigError("manifest deployment must be a non-empty name without / or newline");
  }
  if (typeof policy !== "string") {
    throw new ConfigError("manifest policy must be policy-file TOML text");
  }
  if (typeof seconds !== "number" || !Number.isSafeInteger(seconds) || seconds < 10) {
    throw new ConfigError("manifest epoch_seconds must be an integer >= 10");
  }
  return Object.freeze({ raw: Buffer.from(raw), deployment, policyToml: policy, epochSeconds: seconds, sha256: sha256(raw) });
}

/** Check the owner's signature over `MANIFEST_CONTEXT ‖ raw` before parsing a byte. */
export function verifyManifest(raw: Uint8Array, signature: Uint8Array, owner: Uint8Array): Manifest {
  const signed = Buffer.concat([Buffer.from(MANIFEST_CONTEXT, "utf8"), raw]);
  if (!ed25519Verifies(owner, signed, signature)) {
    throw new AttestationError(AttestationFailure.POLICY, "manifest signature does not verify under the owner key");
  }
  return parseManifest(raw);
}

/** A coordinator whose evidence verified and whose manifest its owner signed. */
export class AttestedCoordinator {
  constructor(
    /** The Ed25519 key that certifies replicas (the claims' `audit_log_key`). */
    readonly publicKey: Buffer,
    readonly manifest: Manifest,
    readonly measurement: string,
  ) {
    Object.freeze(this);
  }

  /** Whether `enclave` (an attested replica) publishes this coordinator's claims. */
  vouchesFor(enclave: AttestedEnclave): boolean {
    return equalBytes(enclave.claims.auditLogKey, this.publicKey) && equalBytes(enclave.claims.manifestSha256, this.manifest.sha256);
  }
}

export interface CoordinatorOptions {
  /** The policy the coordinator's own evidence must satisfy. */
  policy: AttestationPolicy;
  /** The deployment owner's Ed25519 public key (32 bytes), which signs the manifest. */
  owner: Uint8Array;
  now?: Date;
}

/** Verify a coordinator's `ChallengeResponse` to `nonce`: evidence, manifest, their binding. */
export function verifyCoordinator(response: Msg, nonce: Uint8Array, o: CoordinatorOptions): AttestedCoordinator {
  const attested = verifyEnclave(evidenceFromMessage((response["coordinator"] as Msg | null) ?? {}), {
    nonce,
    policy: o.policy,
    now: o.now ?? new Date(),
  });
  const manifest = verifyManifest(
    (response["manifest"] as Buffer | undefined) ?? Buffer.alloc(0),
    (response["manifest_signature"] as Buffer | undefined) ?? Buffer.alloc(0),
    o.owner,
  );
  if (!equalBytes(attested.claims.manifestSha256, manifest.sha256)) {
    throw new AttestationError(AttestationFailure.UNBOUND_KEY, "the coordinator's evidence binds another manifest");
  }
  if (attested.claims.auditLogKey.length !== 32) {
    throw new AttestationError(AttestationFailure.MALFORMED, "the coordinator names no key");
  }
  return new AttestedCoordinator(attested.claims.auditLogKey, manifest, attested.measurement);
}

const CHALLENGE_METHOD = "/veil.v1.KeyReleaseService/Challenge";

/** Ask the coordinator at `address` (host:port) for its evidence and verify it. */
export async function attestCoordinator(
  address: string,
  o: CoordinatorOptions & { random?: (n: number) => Buffer; timeoutMs?: number },
): Promise<AttestedCoordinator> {
  const nonce = (o.random ?? randomBytes)(NONCE_LEN);
  const def = methodDefinitions().get(CHALLENGE_METHOD);
  if (def === undefined) throw new Error(`unknown method ${CHALLENGE_METHOD}`);
  const channel = new grpc.Client(address, grpc.credentials.createInsecure());
  let response: Msg;
  try {
    response = await new Promise<Msg>((resolve, reject) => {
      channel.makeUnaryRequest(
        def.path, def.requestSerialize, def.responseDeserialize, { nonce }, new grpc.Metadata(),
        { deadline: new Date(Date.now() + (o.timeoutMs ?? 20_000)) },
        (err, value) => (err || value === undefined ? reject(err ?? new Error("empty answer")) : resolve(value)),
      );
    });
  } catch (exc) {
    const code = (exc as { code?: number }).code;
    const name = code !== undefined ? (grpc.status[code] ?? "UNKNOWN") : "UNKNOWN";
    throw new AttestationError(AttestationFailure.UNSUPPORTED, `coordinator unreachable: ${name}`);
  } finally {
    channel.close();
  }
  return verifyCoordinator(response, nonce, o);
}
