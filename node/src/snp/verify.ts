/**
 * SEV-SNP evidence verification, step for step as `veil.sdk.attestation._snp_verify` (and
 * docs/PROTOCOL.md section 2): the first failure raises `AttestationError`, nothing after it
 * runs, so both SDKs report the same reason for the same evidence.
 */
import { type X509Certificate, verify as cryptoVerify } from "node:crypto";
import { equalBytes } from "../bytes.js";
import { AttestationError, AttestationFailure } from "../errors.js";
import type { AttestationPolicy, TrustRoot } from "../policy.js";
import { issuedBy, isP384, type SnpCertChain } from "./certs.js";
import { certificateExtensions, decodeIa5, decodeInteger, decodeOctets } from "./der.js";
import {
  type Product,
  SIGNATURE_ALGO_ECDSA_P384_SHA384,
  SnpReport,
  type TcbVersion,
  chipIdLength,
  productFromName,
  tcbEqual,
  tcbMeets,
  tcbToString,
} from "./report.js";

const AMD = "1.3.6.1.4.1.3704.1.";
const OID_PRODUCT_NAME = `${AMD}2`;
const OID_BL_SPL = `${AMD}3.1`;
const OID_TEE_SPL = `${AMD}3.2`;
const OID_SNP_SPL = `${AMD}3.3`;
const OID_UCODE_SPL = `${AMD}3.8`;
const OID_FMC_SPL = `${AMD}3.9`;
const OID_HWID = `${AMD}4`;
const OID_CSP_ID = `${AMD}5`;
const FUTURE_SKEW_MS = 30_000;

/** What a verified SEV-SNP report proves. Only built by `verifySnpReport`. */
export interface VerifiedSnpReport {
  readonly tee: "sev-snp";
  readonly product: Product;
  readonly measurement: Buffer;
  readonly reportData: Buffer;
  readonly hostData: Buffer;
  readonly chipId: Buffer;
  readonly reportedTcb: TcbVersion;
  readonly vmpl: number;
  readonly policy: bigint;
  readonly version: number;
  readonly rootFingerprint: string;
  readonly insecureRoot: boolean;
  readonly verifiedAt: Date;
}

export interface VerifyOptions {
  now: Date;
  /** What REPORT_DATA must hold (64 bytes; shorter values are zero-padded). */
  expectedReportData?: Uint8Array;
  /** When the nonce was made; evidence older than the policy's maximum age is stale. */
  challengeIssuedAt?: Date;
}

function fail(reason: AttestationFailure, message: string): AttestationError {
  return new AttestationError(reason, message);
}

function sameDer(a: X509Certificate, b: X509Certificate): boolean {
  return equalBytes(a.raw, b.raw);
}

function selectRoot(chain: SnpCertChain, roots: readonly TrustRoot[]): [TrustRoot, X509Certificate] {
  for (const root of roots) {
    const candidates = [chain.ask, root.ask].filter((c): c is X509Certificate => c !== undefined);
    for (const ask of candidates) {
      if (ask.issuer !== root.ark.subject) {
        continue;
      }
      if (!issuedBy(ask, root.ark) || !issuedBy(chain.vcek, ask)) {
        continue;
      }
      if (chain.ark !== undefined && !sameDer(chain.ark, root.ark)) {
        throw fail(AttestationFailure.UNTRUSTED_ROOT, "the chain's ARK differs from the pinned root that signed its ASK");
      }
      return [root, ask];
    }
  }
  if (chain.ask === undefined) {
    throw fail(AttestationFailure.UNTRUSTED_ROOT, "VCEK does not chain to any pinned root's ASK");
  }
  throw fail(AttestationFailure.UNTRUSTED_ROOT, `chain (ASK ${chain.ask.subject.replace(/\n/g, ", ")}) does not lead to a pinned ARK`);
}

function checkValidity(cert: X509Certificate, what: string, now: Date): void {
  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  if (Number.isNaN(notBefore) || Number.isNaN(notAfter)) {
    throw fail(AttestationFailure.MALFORMED, `${what} certificate has an unreadable validity period`);
  }
  if (now.getTime() < notBefore) {
    throw fail(AttestationFailure.CERT_EXPIRED, `${what} certificate is not valid before ${new Date(notBefore).toISOString()}`);
  }
  if (now.getTime() > notAfter) {
    throw fail(AttestationFailure.CERT_EXPIRED, `${what} certificate expired at ${new Date(notAfter).toISOString()}`);
  }
}

/** r, s (non-negative) as the 96-byte IEEE P1363 form; undefined when either exceeds 48 bytes. */
function p1363(r: bigint, s: bigint): Buffer | undefined {
  const max = (1n << 384n) - 1n;
  if (r > max || s > max) {
    return undefined;
  }
  const pad = (v: bigint) => Buffer.from(v.toString(16).padStart(96, "0"), "hex");
  return Buffer.concat([pad(r), pad(s)]);
}

function checkSignature(vcek: X509Certificate, report: SnpReport): void {
  if (report.signatureAlgo !== SIGNATURE_ALGO_ECDSA_P384_SHA384) {
    throw fail(AttestationFailure.MALFORMED, `unsupported signature algorithm ${report.signatureAlgo}`);
  }
  if (report.signingKey !== 0) {
    throw fail(
      AttestationFailure.UNSUPPORTED,
      `report signed by key type ${report.signingKey}; only VCEK-signed reports are supported`,
    );
  }
  if (!isP384(vcek)) {
    throw fail(AttestationFailure.BAD_CHAIN, "VCEK key is not ECDSA P-384");
  }
  const signature = p1363(report.signatureR, report.signatureS);
  const ok =
    signature !== undefined &&
    cryptoVerify("sha384", report.signedBytes, { key: vcek.publicKey, dsaEncoding: "ieee-p1363" }, signature);
  if (!ok) {
    throw fail(AttestationFailure.BAD_SIGNATURE, "report signature does not verify under the VCEK");
  }
}

function checkVcekExtensions(ext: Map<string, Buffer>, report: SnpReport, product: Product): TcbVersion {
  if (ext.has(OID_CSP_ID)) {
    throw fail(AttestationFailure.UNSUPPORTED, "VLEK-signed reports are not supported");
  }
  const name = ext.get(OID_PRODUCT_NAME);
  if (name !== undefined) {
    const named = productFromName(decodeIa5(name, "productName"));
    if (named !== product) {
      throw fail(AttestationFailure.CERT_MISMATCH, `VCEK is for ${named}, but its chain is ${product}'s`);
    }
  }
  const hwidRaw = ext.get(OID_HWID);
  if (hwidRaw === undefined) {
    throw fail(AttestationFailure.CERT_MISMATCH, "VCEK has no hwID extension");
  }
  const hwid = decodeOctets(hwidRaw, "hwID", chipIdLength(product));
  if (!report.chipIdMasked && !equalBytes(hwid, report.chipId.subarray(0, hwid.length))) {
    throw fail(AttestationFailure.CERT_MISMATCH, "VCEK hwID does not match the CHIP_ID");
  }
  const spl = (oid: string, what: string): number => {
    const value = ext.get(oid);
    if (value === undefined) {
      throw fail(AttestationFailure.CERT_MISMATCH, `VCEK has no ${what} extension`);
    }
    return decodeInteger(value, what);
  };
  const tcb = report.reportedTcb(product);
  const certTcb: TcbVersion = {
    bootloader: spl(OID_BL_SPL, "blSPL"),
    tee: spl(OID_TEE_SPL, "teeSPL"),
    snp: spl(OID_SNP_SPL, "snpSPL"),
    microcode: spl(OID_UCODE_SPL, "ucodeSPL"),
    fmc: product === "Turin" ? spl(OID_FMC_SPL, "fmcSPL") : 0,
  };
  if (!tcbEqual(certTcb, tcb)) {
    throw fail(
      AttestationFailure.CERT_MISMATCH,
      `REPORTED_TCB (${tcbToString(tcb)}) differs from the VCEK's TCB (${tcbToString(certTcb)})`,
    );
  }
  return tcb;
}

function checkPolicy(report: SnpReport, tcb: TcbVersion, policy: AttestationPolicy, o: VerifyOptions): void {
  if (report.debugAllowed && !policy.allowDebug) {
    throw fail(AttestationFailure.DEBUG_ENCLAVE, "guest policy allows debugging (bit 19): the host can read its memory");
  }
  if (policy.expectedMeasurements.length > 0 && !policy.expectedMeasurements.some((m) => equalBytes(m, report.measurement))) {
    throw fail(AttestationFailure.MEASUREMENT_MISMATCH, `measurement ${report.measurement.toString("hex")} is not an expected one`);
  }
  if (policy.minTcb !== undefined && !tcbMeets(tcb, policy.minTcb)) {
    throw fail(
      AttestationFailure.TCB_TOO_LOW,
      `reported TCB (${tcbToString(tcb)}) is below the minimum (${tcbToString(policy.minTcb)})`,
    );
  }
  if (!policy.allowedVmpls.has(report.vmpl)) {
    throw fail(
      AttestationFailure.VMPL_NOT_ALLOWED,
      `report is from VMPL ${report.vmpl}, allowed: ${[...policy.allowedVmpls].sort().join(", ")}`,
    );
  }
  if (o.expectedReportData !== undefined) {
    const expected = Buffer.alloc(Math.max(64, o.expectedReportData.length));
    Buffer.from(o.expectedReportData).copy(expected);
    if (!equalBytes(report.reportData, expected)) {
      throw fail(AttestationFailure.UNBOUND_KEY, "REPORT_DATA does not commit to this nonce and key");
    }
  } else if (policy.requireKeyBinding) {
    throw fail(AttestationFailure.UNBOUND_KEY, "policy requires REPORT_DATA binding but no expected value was given");
  }
  if (o.challengeIssuedAt !== undefined) {
    const age = o.now.getTime() - o.challengeIssuedAt.getTime();
    if (age > policy.maxEvidenceAgeMs || age < -FUTURE_SKEW_MS) {
      throw fail(
        AttestationFailure.STALE_NONCE,
        `evidence answers a challenge issued ${Math.round(age / 1000)} s ago (max ${Math.round(policy.maxEvidenceAgeMs / 1000)} s)`,
      );
    }
  }
}

/** Verify SEV-SNP evidence against `policy` at `now`; throw, or return what it proves. */
export function verifySnpReport(
  report: Uint8Array | SnpReport,
  chain: SnpCertChain,
  policy: AttestationPolicy,
  options: VerifyOptions,
): VerifiedSnpReport {
  const parsed = report instanceof SnpReport ? report : SnpReport.fromBytes(report);
  const [root, ask] = selectRoot(chain, policy.roots);
  if (root.insecure) {
    process.emitWarning(
      `trusting a test root for SEV-SNP evidence (ARK sha256 ${root.fingerprint.slice(0, 16)}…): ` +
        "this enclave is NOT proven to run on AMD hardware",
      { type: "InsecureModeWarning", code: "VEIL_INSECURE_ROOT" },
    );
  }
  for (const [cert, what] of [
    [root.ark, "ARK"],
    [ask, "ASK"],
    [chain.vcek, "VCEK"],
  ] as const) {
    checkValidity(cert, what, options.now);
  }
  let ext: Map<string, Buffer> | undefined;
  const extensions = (): Map<string, Buffer> => (ext ??= certificateExtensions(chain.vcek.raw));
  let product = root.product;
  if (product === undefined) {
    const name = extensions().get(OID_PRODUCT_NAME);
    if (name === undefined) {
      throw fail(AttestationFailure.CERT_MISMATCH, "VCEK has no productName extension");
    }
    product = productFromName(decodeIa5(name, "productName"));
  }
  checkSignature(chain.vcek, parsed);
  const tcb = checkVcekExtensions(extensions(), parsed, product);
  checkPolicy(parsed, tcb, policy, options);
  return Object.freeze({
    tee: "sev-snp",
    product,
    measurement: Buffer.from(parsed.measurement),
    reportData: Buffer.from(parsed.reportData),
    hostData: Buffer.from(parsed.hostData),
    chipId: Buffer.from(parsed.chipId),
    reportedTcb: tcb,
    vmpl: parsed.vmpl,
    policy: parsed.policy,
    version: parsed.version,
    rootFingerprint: root.fingerprint,
    insecureRoot: root.insecure,
    verifiedAt: options.now,
  });
}
