/** Byte helpers: hex, concatenation, big-endian integers, constant-time comparison. */
import { timingSafeEqual } from "node:crypto";

export function hex(data: Uint8Array): string {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString("hex");
}

export function fromHex(text: string): Buffer {
  if (!/^(?:[0-9a-fA-F]{2})*$/.test(text)) {
    throw new TypeError("not an even-length hex string");
  }
  return Buffer.from(text, "hex");
}

export function concat(...parts: Uint8Array[]): Buffer {
  return Buffer.concat(parts);
}

export function u16be(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

export function u64be(n: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

export function i64be(n: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigInt64BE(BigInt(n));
  return b;
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && timingSafeEqual(a, b);
}

export function asBuffer(data: Uint8Array | ArrayBuffer): Buffer {
  if (data instanceof ArrayBuffer) {
    return Buffer.from(data);
  }
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/** A string quoted as Python's `repr` quotes it, so messages read the same in both SDKs. */
export function repr(text: unknown): string {
  const s = String(text).replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
  if (s.includes("'") && !s.includes('"')) {
    return `"${s}"`;
  }
  return `'${s.replace(/'/g, "\\'")}'`;
}
