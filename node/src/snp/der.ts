/**
 * The DER the SEV-SNP verifier needs: the extensions of an X.509 certificate (node:crypto's
 * `X509Certificate` does not expose unknown ones) and the three value types AMD's VCEK
 * extensions use (INTEGER, IA5String, raw/OCTET STRING). Strict: definite lengths only, and
 * every length must match the bytes present.
 */
import { AttestationError, AttestationFailure } from "../errors.js";

interface Tlv {
  tag: number;
  body: Buffer;
  end: number;
}

function fail(message: string): AttestationError {
  return new AttestationError(AttestationFailure.MALFORMED, message);
}

function readTlv(data: Buffer, offset: number, what: string): Tlv {
  if (offset + 2 > data.length) {
    throw fail(`${what}: truncated DER`);
  }
  const tag = data[offset] as number;
  let length = data[offset + 1] as number;
  let start = offset + 2;
  if (length & 0x80) {
    const n = length & 0x7f;
    if (n === 0 || n > 4 || start + n > data.length) {
      throw fail(`${what}: bad DER length`);
    }
    length = 0;
    for (let i = 0; i < n; i++) {
      length = length * 256 + (data[start + i] as number);
    }
    start += n;
  }
  const end = start + length;
  if (end > data.length) {
    throw fail(`${what}: DER length past the end`);
  }
  return { tag, body: data.subarray(start, end), end };
}

function children(body: Buffer, what: string): Tlv[] {
  const out: Tlv[] = [];
  let offset = 0;
  while (offset < body.length) {
    const tlv = readTlv(body, offset, what);
    out.push(tlv);
    offset = tlv.end;
  }
  return out;
}

function oidToString(body: Buffer): string {
  if (body.length === 0) {
    throw fail("empty OBJECT IDENTIFIER");
  }
  const first = body[0] as number;
  const parts = [Math.min(2, Math.floor(first / 40)), first - 40 * Math.min(2, Math.floor(first / 40))];
  let value = 0;
  for (let i = 1; i < body.length; i++) {
    const byte = body[i] as number;
    value = value * 128 + (byte & 0x7f);
    if (!(byte & 0x80)) {
      parts.push(value);
      value = 0;
    }
  }
  return parts.join(".");
}

/** extnID (dotted) -> extnValue contents, from a DER certificate. */
export function certificateExtensions(der: Buffer): Map<string, Buffer> {
  const cert = readTlv(der, 0, "certificate");
  const [tbs] = children(cert.body, "certificate");
  if (tbs === undefined || tbs.tag !== 0x30) {
    throw fail("certificate has no TBSCertificate");
  }
  const out = new Map<string, Buffer>();
  for (const field of children(tbs.body, "TBSCertificate")) {
    if (field.tag !== 0xa3) {
      continue;
    }
    const [list] = children(field.body, "extensions");
    for (const ext of children(list?.body ?? Buffer.alloc(0), "extensions")) {
      const parts = children(ext.body, "extension");
      const oid = parts[0];
      const value = parts[parts.length - 1];
      if (oid === undefined || oid.tag !== 0x06 || value === undefined || value.tag !== 0x04) {
        throw fail("malformed certificate extension");
      }
      out.set(oidToString(oid.body), value.body);
    }
  }
  return out;
}

function exact(data: Buffer, tag: number, what: string): Buffer {
  const tlv = readTlv(data, 0, `VCEK extension ${what}`);
  if (tlv.tag !== tag || tlv.end !== data.length || data.length < 2) {
    throw fail(`VCEK extension ${what} is not DER`);
  }
  return tlv.body;
}

export function decodeInteger(data: Buffer, what: string): number {
  const body = exact(data, 0x02, what);
  if (body.length === 0) {
    throw fail(`VCEK extension ${what}: empty`);
  }
  let value = BigInt.asIntN(body.length * 8, BigInt(`0x${body.toString("hex")}`));
  if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
    value = value > 0n ? BigInt(Number.MAX_SAFE_INTEGER) : BigInt(Number.MIN_SAFE_INTEGER);
  }
  return Number(value);
}

export function decodeIa5(data: Buffer, what: string): string {
  return exact(data, 0x16, what).toString("latin1");
}

/** hwID is stored as raw bytes by AMD's KDS; an OCTET STRING wrapper is tolerated too. */
export function decodeOctets(data: Buffer, what: string, expectedLen: number): Buffer {
  if (data.length === expectedLen) {
    return data;
  }
  return exact(data, 0x04, what);
}
