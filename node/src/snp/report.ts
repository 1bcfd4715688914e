/**
 * AMD SEV-SNP ATTESTATION_REPORT: the fixed 1184-byte layout (AMD SEV-SNP ABI specification,
 * Table 22; little-endian), parsed once into a frozen object. Versions 2 to 5 share it.
 */
import { AttestationError, AttestationFailure } from "../errors.js";

export const REPORT_SIZE = 0x4a0;
export const SIGNED_SIZE = 0x2a0;
const SIG_COMPONENT = 72;
export const POLICY_DEBUG_BIT = 19n;
export const SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1;

export type Product = "Milan" | "Genoa" | "Turin";
export const PRODUCTS: readonly Product[] = ["Milan", "Genoa", "Turin"];

/** Map a VCEK productName ("Milan-B0", "Genoa", "Turin") to a product. */
export function productFromName(name: string): Product {
  const base = (name.split("-", 1)[0] ?? "").trim().toLowerCase();
  const found = PRODUCTS.find((p) => p.toLowerCase() === base);
  if (found === undefined) {
    throw new AttestationError(AttestationFailure.UNSUPPORTED, `unknown AMD product ${JSON.stringify(name)}`);
  }
  return found;
}

export function chipIdLength(product: Product): number {
  return product === "Turin" ? 8 : 64;
}

/** The security patch levels that make up an SNP TCB version. */
export interface TcbVersion {
  readonly bootloader: number;
  readonly tee: number;
  readonly snp: number;
  readonly microcode: number;
  readonly fmc: number;
}

export function tcbFromU64(raw: Buffer, product: Product): TcbVersion {
  const b = (i: number) => raw[i] as number;
  if (product === "Turin") {
    return { fmc: b(0), bootloader: b(1), tee: b(2), snp: b(3), microcode: b(7) };
  }
  return { bootloader: b(0), tee: b(1), snp: b(6), microcode: b(7), fmc: 0 };
}

/** Every component at least the minimum's (not a comparison of the u64). */
export function tcbMeets(tcb: TcbVersion, minimum: TcbVersion): boolean {
  return (
    tcb.bootloader >= minimum.bootloader &&
    tcb.tee >= minimum.tee &&
    tcb.snp >= minimum.snp &&
    tcb.microcode >= minimum.microcode &&
    tcb.fmc >= minimum.fmc
  );
}

export function tcbEqual(a: TcbVersion, b: TcbVersion): boolean {
  return a.bootloader === b.bootloader && a.tee === b.tee && a.snp === b.snp && a.microcode === b.microcode && a.fmc === b.fmc;
}

export function tcbToString(t: TcbVersion): string {
  return `bl=${t.bootloader} tee=${t.tee} snp=${t.snp} ucode=${t.microcode}${t.fmc ? ` fmc=${t.fmc}` : ""}`;
}

function leInt(data: Buffer): bigint {
  return BigInt(`0x${Buffer.from(data).reverse().toString("hex") || "0"}`);
}

/** A parsed (not yet verified) SEV-SNP attestation report. */
export class SnpReport {
  private constructor(
    readonly raw: Buffer,
    readonly version: number,
    readonly policy: bigint,
    readonly vmpl: number,
    readonly signatureAlgo: number,
    readonly flags: number,
    readonly reportData: Buffer,
    readonly measurement: Buffer,
    readonly hostData: Buffer,
    readonly reportedTcbRaw: Buffer,
    readonly chipId: Buffer,
    readonly signatureR: bigint,
    readonly signatureS: bigint,
  ) {
    Object.freeze(this);
  }

  /** Parse the 1184-byte report; `AttestationError(malformed)` on any defect. */
  static fromBytes(data: Uint8Array): SnpReport {
    const raw = Buffer.from(data);
    if (raw.length !== REPORT_SIZE) {
      throw new AttestationError(AttestationFailure.MALFORMED, `SEV-SNP report is ${raw.length} bytes, expected ${REPORT_SIZE}`);
    }
    const version = raw.readUInt32LE(0x00);
    if (version < 2 || version > 5) {
      throw new AttestationError(AttestationFailure.MALFORMED, `unsupported SEV-SNP report version ${version}`);
    }
    return new SnpReport(
      raw,
      version,
      raw.readBigUInt64LE(0x08),
      raw.readUInt32LE(0x30),
      raw.readUInt32LE(0x34),
      raw.readUInt32LE(0x48),
      raw.subarray(0x50, 0x90),
      raw.subarray(0x90, 0xc0),
      raw.subarray(0xc0, 0xe0),
      raw.subarray(0x180, 0x188),
      raw.subarray(0x1a0, 0x1e0),
      leInt(raw.subarray(0x2a0, 0x2a0 + SIG_COMPONENT)),
      leInt(raw.subarray(0x2e8, 0x2e8 + SIG_COMPONENT)),
    );
  }

  get signedBytes(): Buffer {
    return this.raw.subarray(0, SIGNED_SIZE);
  }

  /** Guest policy bit 19: the hypervisor may debug (read) this guest's memory. */
  get debugAllowed(): boolean {
    return ((this.policy >> POLICY_DEBUG_BIT) & 1n) === 1n;
  }

  /** Bits 4:2 of the flags word: 0 = VCEK, 1 = VLEK, 7 = none. */
  get signingKey(): number {
    return (this.flags >> 2) & 0b111;
  }

  /** Flags bit 1: MASK_CHIP_ID. */
  get chipIdMasked(): boolean {
    return ((this.flags >> 1) & 1) === 1;
  }

  reportedTcb(product: Product): TcbVersion {
    return tcbFromU64(this.reportedTcbRaw, product);
  }
}
