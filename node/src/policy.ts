/** Attestation policy: what a client demands of an enclave before it sends anything. */
import type { X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { ConfigError, ConfigFailure } from "./errors.js";
import { AMD_ROOT_PEMS } from "./snp/amd-roots.js";
import { fingerprint, isSelfSigned, loadCertificates } from "./snp/certs.js";
import { PRODUCTS, type Product, type TcbVersion } from "./snp/report.js";

/** A pinned root of trust: an ARK (self-signed, RSA-PSS) with, optionally, its ASK. */
export interface TrustRoot {
  readonly ark: X509Certificate;
  readonly ask: X509Certificate | undefined;
  /** The AMD product line of an AMD root; undefined for a test root. */
  readonly product: Product | undefined;
  /** Not AMD's (the simulated TEE's, a lab's): every verification under it warns. */
  readonly insecure: boolean;
  /** SHA-256 of the ARK's DER, hex. */
  readonly fingerprint: string;
}

/** A root given explicitly (e.g. `simulated-root.pem`): ARK, optionally followed by its ASK. */
export function trustRootFromPem(pem: Uint8Array | string, insecure = true): TrustRoot {
  const certs = loadCertificates(pem);
  const ark = certs.find(isSelfSigned);
  if (ark === undefined) {
    throw new ConfigError("trust root file holds no self-signed root", ConfigFailure.MALFORMED);
  }
  const ask = certs.find((c) => c !== ark && c.issuer === ark.subject);
  return Object.freeze({ ark, ask, product: undefined, insecure, fingerprint: fingerprint(ark) });
}

let amd: readonly TrustRoot[] | undefined;
/** AMD's production ARKs for Milan, Genoa and Turin, with their ASKs (the SDKs pin the same). */
export function amdRoots(): readonly TrustRoot[] {
  if (amd === undefined) {
    amd = Object.freeze(
      PRODUCTS.map((product) => {
        const [ark] = loadCertificates(AMD_ROOT_PEMS[product].ark);
        const [ask] = loadCertificates(AMD_ROOT_PEMS[product].ask);
        if (ark === undefined || ask === undefined) {
          throw new Error(`pinned ${product} root missing`);
        }
        return Object.freeze({ ark, ask, product, insecure: false, fingerprint: fingerprint(ark) });
      }),
    );
  }
  return amd;
}

export interface PolicyOptions {
  /** Expected MEASUREMENTs (48 bytes, or 96 hex digits). Empty: any measurement. */
  measurements?: readonly (Uint8Array | string)[];
  minTcb?: TcbVersion;
  allowedVmpls?: readonly number[];
  /** How old a challenge's answer may be, in milliseconds (default 5 minutes). */
  maxEvidenceAgeMs?: number;
  allowDebug?: boolean;
  requireKeyBinding?: boolean;
}

function measurementsOf(values: readonly (Uint8Array | string)[]): Buffer[] {
  return values.map((v) => {
    const raw = typeof v === "string" ? Buffer.from(v, "hex") : Buffer.from(v);
    if (raw.length !== 48 || (typeof v === "string" && v.length !== 96)) {
      throw new ConfigError(`a SEV-SNP measurement is 48 bytes (96 hex), got ${JSON.stringify(typeof v === "string" ? v : raw.toString("hex"))}`);
    }
    return raw;
  });
}

/**
 * What an enclave's SEV-SNP evidence must prove. Build one with `AttestationPolicy.production`
 * (AMD's pinned roots) or `AttestationPolicy.simulatedForTests` (a test root; warns every use).
 */
export class AttestationPolicy {
  readonly roots: readonly TrustRoot[];
  readonly expectedMeasurements: readonly Buffer[];
  readonly allowDebug: boolean;
  readonly minTcb: TcbVersion | undefined;
  readonly allowedVmpls: ReadonlySet<number>;
  readonly maxEvidenceAgeMs: number;
  readonly requireKeyBinding: boolean;

  constructor(roots: readonly TrustRoot[], options: PolicyOptions = {}) {
    if (roots.length === 0) {
      throw new ConfigError("an attestation policy needs at least one pinned root");
    }
    const vmpls = options.allowedVmpls ?? [0, 1, 2, 3];
    if (vmpls.length === 0 || vmpls.some((v) => ![0, 1, 2, 3].includes(v))) {
      throw new ConfigError("allowedVmpls must be a non-empty subset of {0, 1, 2, 3}");
    }
    const age = options.maxEvidenceAgeMs ?? 5 * 60 * 1000;
    if (!(age > 0)) {
      throw new ConfigError("maxEvidenceAgeMs must be positive");
    }
    this.roots = Object.freeze([...roots]);
    this.expectedMeasurements = Object.freeze(measurementsOf(options.measurements ?? []));
    this.allowDebug = options.allowDebug ?? false;
    this.minTcb = options.minTcb;
    this.allowedVmpls = new Set(vmpls);
    this.maxEvidenceAgeMs = age;
    this.requireKeyBinding = options.requireKeyBinding ?? true;
    Object.freeze(this);
  }

  /** AMD's Milan, Genoa and Turin roots; debug forbidden; measurements pinned. */
  static production(options: PolicyOptions & { allowAnyMeasurement?: boolean } = {}): AttestationPolicy {
    if ((options.measurements ?? []).length === 0 && !options.allowAnyMeasurement) {
      throw new ConfigError(
        "a production policy must pin at least one measurement (pass allowAnyMeasurement: true to accept any code)",
        ConfigFailure.MISSING_VALUE,
      );
    }
    return new AttestationPolicy(amdRoots(), { ...options, allowDebug: false });
  }

  /** Trust a test root (e.g. the simulated TEE's `simulated-root.pem`): warns on every use. */
  static simulatedForTests(trustRoot: Uint8Array | string | TrustRoot, options: PolicyOptions = {}): AttestationPolicy {
    let root: TrustRoot;
    if (typeof trustRoot === "string" && !trustRoot.includes("-----BEGIN")) {
      let pem: Buffer;
      try {
        pem = readFileSync(trustRoot);
      } catch (exc) {
        const missing = (exc as NodeJS.ErrnoException).code === "ENOENT";
        throw new ConfigError(
          `trust root file ${trustRoot} ${missing ? "does not exist" : "cannot be read"}`,
          missing ? ConfigFailure.MISSING_FILE : ConfigFailure.UNREADABLE,
        );
      }
      root = trustRootFromPem(pem, true);
    } else if (typeof trustRoot === "string" || trustRoot instanceof Uint8Array) {
      root = trustRootFromPem(trustRoot, true);
    } else {
      root = trustRoot;
    }
    return new AttestationPolicy([root], options);
  }

  /** A copy with some settings changed. */
  with(changes: PolicyOptions & { roots?: readonly TrustRoot[] }): AttestationPolicy {
    return new AttestationPolicy(changes.roots ?? this.roots, {
      measurements: changes.measurements ?? this.expectedMeasurements,
      minTcb: "minTcb" in changes ? changes.minTcb : this.minTcb,
      allowedVmpls: changes.allowedVmpls ?? [...this.allowedVmpls],
      maxEvidenceAgeMs: changes.maxEvidenceAgeMs ?? this.maxEvidenceAgeMs,
      allowDebug: changes.allowDebug ?? this.allowDebug,
      requireKeyBinding: changes.requireKeyBinding ?? this.requireKeyBinding,
    });
  }

  get insecure(): boolean {
    return this.roots.some((r) => r.insecure);
  }
}
