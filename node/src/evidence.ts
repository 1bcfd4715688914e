/** An enclave whose evidence verified: the only thing this client seals data to. */
import { equalBytes } from "./bytes.js";
import { AttestationError, AttestationFailure, AuditLogError, ConfigError } from "./errors.js";
import { Verifier } from "./audit/note.js";
import type { AttestationPolicy } from "./policy.js";
import { type Msg, decode } from "./proto.js";
import { NONCE_LEN, PROTOCOL_VERSION, Suite, claimsDigest, publicKeyLength, reportDataFor } from "./protocol.js";
import { loadCertificates, snpCertChain } from "./snp/certs.js";
import { type VerifiedSnpReport, verifySnpReport } from "./snp/verify.js";

/** What the enclave states about itself; the hardware report commits to these exact bytes. */
export interface EnclaveClaims {
  readonly raw: Buffer;
  readonly keyId: string;
  readonly keys: ReadonlyMap<Suite, Buffer>;
  readonly issuedAt: Date;
  readonly expiresAt: Date;
  readonly measurementHex: string;
  readonly auditLogKey: Buffer;
  readonly auditLogOrigin: string;
  /**
   * Replicated deployments (1.3): the manifest's SHA-256 (empty otherwise). `auditLogKey` is
   * then the coordinator's key, which certifies each replica's log key (`replica.ts`).
   */
  readonly manifestSha256: Buffer;
}

export function parseClaims(raw: Uint8Array): EnclaveClaims {
  let msg: Msg;
  try {
    msg = decode("EnclaveClaims", raw);
  } catch {
    throw new AttestationError(AttestationFailure.MALFORMED, "enclave claims are not a valid EnclaveClaims");
  }
  if (msg["protocol_version"] !== PROTOCOL_VERSION) {
    throw new AttestationError(
      AttestationFailure.UNSUPPORTED,
      `enclave speaks protocol version ${msg["protocol_version"]}, SDK speaks ${PROTOCOL_VERSION}`,
    );
  }
  const keys = new Map<Suite, Buffer>();
  for (const k of msg["keys"] as Msg[]) {
    const suite = k["suite"] as number;
    if (suite !== Suite.X25519_SHA256_AES256GCM && suite !== Suite.MLKEM768X25519_SHA256_AES256GCM) {
      continue; // a suite this client doesn't know; it can still use the others
    }
    const key = Buffer.from(k["public_key"] as Buffer);
    if (key.length !== publicKeyLength(suite)) {
      throw new AttestationError(AttestationFailure.MALFORMED, `suite ${suite} key is ${key.length} bytes, expected ${publicKeyLength(suite)}`);
    }
    keys.set(suite, key);
  }
  if (keys.size === 0) {
    throw new AttestationError(AttestationFailure.UNSUPPORTED, "enclave offers no sealing suite this SDK knows");
  }
  const issued = BigInt(msg["issued_at_ms"] as string);
  const expires = BigInt(msg["expires_at_ms"] as string);
  if (expires <= issued) {
    throw new AttestationError(AttestationFailure.MALFORMED, "claims expire before issue");
  }
  return Object.freeze({
    raw: Buffer.from(raw),
    keyId: String(msg["key_id"]),
    keys,
    issuedAt: new Date(Number(issued)),
    expiresAt: new Date(Number(expires)),
    measurementHex: String(msg["measurement_hex"]),
    auditLogKey: Buffer.from(msg["audit_log_key"] as Buffer),
    auditLogOrigin: String(msg["audit_log_origin"]),
    manifestSha256: Buffer.from((msg["manifest_sha256"] as Buffer | undefined) ?? []),
  });
}

/** Attestation evidence as the enclave returned it (not yet verified). */
export interface Evidence {
  readonly tee: string;
  readonly report: Buffer;
  readonly certChain: readonly Buffer[];
  readonly claims: Buffer;
  readonly gpuCount: number;
  readonly collateralCount: number;
  /** The serialized `AttestationEvidence`, as received. */
  readonly message: Msg;
}

export function evidenceFromMessage(msg: Msg): Evidence {
  return Object.freeze({
    tee: String(msg["tee"] ?? ""),
    report: Buffer.from((msg["report"] as Buffer | undefined) ?? []),
    certChain: ((msg["cert_chain"] as Buffer[] | undefined) ?? []).map((c) => Buffer.from(c)),
    claims: Buffer.from((msg["claims"] as Buffer | undefined) ?? []),
    gpuCount: ((msg["gpus"] as unknown[] | undefined) ?? []).length,
    collateralCount: Object.keys((msg["collateral"] as object | undefined) ?? {}).length,
    message: msg,
  });
}

/** A verified enclave: its hardware report, its claims, and how long the verdict holds. */
export class AttestedEnclave {
  constructor(
    readonly report: VerifiedSnpReport,
    readonly claims: EnclaveClaims,
    readonly claimsDigest: Buffer,
    readonly evidence: Evidence,
    readonly validUntil: Date,
    readonly nonce: Buffer,
  ) {
    Object.freeze(this);
  }

  get tee(): string {
    return this.evidence.tee;
  }

  /** SEV-SNP MEASUREMENT, hex. */
  get measurement(): string {
    return this.report.measurement.toString("hex");
  }

  get insecureRoot(): boolean {
    return this.report.insecureRoot;
  }

  get keyId(): string {
    return this.claims.keyId;
  }

  publicKey(suite: Suite): Buffer {
    const key = this.claims.keys.get(suite);
    if (key === undefined) {
      throw new AttestationError(AttestationFailure.UNSUPPORTED, `enclave does not offer suite ${suite}`);
    }
    return key;
  }

  isValidAt(now: Date): boolean {
    return now.getTime() < this.validUntil.getTime();
  }

  /** The audit log's verifier key, bound into this attestation (undefined: no audit log). */
  get logVerifier(): Verifier | undefined {
    if (this.claims.auditLogKey.length === 0) {
      return undefined;
    }
    try {
      return Verifier.fromPublicKey(this.claims.auditLogOrigin, this.claims.auditLogKey);
    } catch (exc) {
      throw new AttestationError(
        AttestationFailure.MALFORMED,
        `enclave claims carry a bad audit log key: ${(exc as AuditLogError).message}`,
      );
    }
  }
}

export interface VerifyEnclaveOptions {
  nonce: Uint8Array;
  policy: AttestationPolicy;
  now: Date;
  challengeIssuedAt?: Date;
  /** false for saved evidence (an audit export): the key epoch may have ended since. */
  requireUnexpired?: boolean;
}

/** Verify evidence answering `nonce`: hardware report, chain, policy, claims binding. */
export function verifyEnclave(evidence: Evidence, o: VerifyEnclaveOptions): AttestedEnclave {
  if (o.nonce.byteLength !== NONCE_LEN) {
    throw new ConfigError(`nonce must be ${NONCE_LEN} bytes, not ${o.nonce.byteLength}`);
  }
  const digest = claimsDigest(evidence.claims);
  const bound = reportDataFor(o.nonce, digest);
  if (evidence.tee !== "sev-snp") {
    throw new AttestationError(
      AttestationFailure.UNSUPPORTED,
      `unsupported TEE ${JSON.stringify(evidence.tee)} (this client verifies SEV-SNP; use the Python SDK for TDX)`,
    );
  }
  if (evidence.certChain.length === 0) {
    throw new AttestationError(AttestationFailure.BAD_CHAIN, "evidence carries no certificates");
  }
  const certs = evidence.certChain.flatMap((blob) => loadCertificates(blob));
  const verified = verifySnpReport(evidence.report, snpCertChain(certs), o.policy, {
    now: o.now,
    expectedReportData: bound,
    challengeIssuedAt: o.challengeIssuedAt ?? o.now,
  });
  if (evidence.gpuCount > 0) {
    throw new AttestationError(
      AttestationFailure.POLICY,
      "the enclave presents GPU evidence but the policy has no GPU reference values",
    );
  }
  const claims = parseClaims(evidence.claims);
  const measured = verified.measurement.toString("hex");
  if (claims.measurementHex && !equalBytes(Buffer.from(claims.measurementHex), Buffer.from(measured))) {
    throw new AttestationError(AttestationFailure.MEASUREMENT_MISMATCH, "claimed measurement differs from the hardware report's");
  }
  if ((o.requireUnexpired ?? true) && o.now.getTime() >= claims.expiresAt.getTime()) {
    throw new AttestationError(AttestationFailure.EXPIRED, `enclave key epoch expired at ${claims.expiresAt.toISOString()}`);
  }
  const validUntil = new Date(Math.min(o.now.getTime() + o.policy.maxEvidenceAgeMs, claims.expiresAt.getTime()));
  return new AttestedEnclave(verified, claims, digest, evidence, validUntil, Buffer.from(o.nonce));
}
