/**
 * C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 verifier keys, as
 * `veil.sdk.audit._note`: unknown signers are ignored, a bad signature by a known key is fatal,
 * a note with no signature by a known key is rejected.
 */
import { createHash, createPublicKey, verify as cryptoVerify } from "node:crypto";
import { equalBytes, repr } from "../bytes.js";
import { AuditFailure, AuditLogError } from "../errors.js";

const ALG_ED25519 = 0x01;
const SIG_PREFIX = "\u2014 ";
const MAX_SIGNATURES = 100;
const ED25519_SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

function checkName(name: string): void {
  if (name.length === 0 || /\s/.test(name) || name.includes("+")) {
    throw new AuditLogError(`invalid key name ${repr(name)}: must be non-empty, no spaces, no '+'`);
  }
}

/** The 4-byte key hash: SHA-256(name ‖ "\n" ‖ alg ‖ public key)[:4]. */
export function keyHash(name: string, publicKey: Uint8Array): Buffer {
  return createHash("sha256").update(name, "utf8").update("\n").update(Buffer.from([ALG_ED25519])).update(publicKey).digest().subarray(0, 4);
}

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
/** Strict base64 (Python's `b64decode(validate=True)`). */
export function b64decode(text: unknown, what: string): Buffer {
  if (typeof text !== "string" || !B64.test(text)) {
    throw new AuditLogError(`${what} is not valid base64`);
  }
  return Buffer.from(text, "base64");
}

/** An Ed25519 note verifier key: who signs (`name`) and with what key. */
export class Verifier {
  private constructor(
    readonly name: string,
    readonly keyHash: Buffer,
    readonly publicKey: Buffer,
  ) {
    Object.freeze(this);
  }

  static fromPublicKey(name: string, publicKey: Uint8Array): Verifier {
    checkName(name);
    if (publicKey.byteLength !== 32) {
      throw new AuditLogError(`Ed25519 public key is ${publicKey.byteLength} bytes, expected 32`);
    }
    return new Verifier(name, keyHash(name, publicKey), Buffer.from(publicKey));
  }

  /** Parse `name+hash+base64(0x01 ‖ pubkey)`; the hash must match the key. */
  static fromVkey(vkey: string): Verifier {
    const text = vkey.trim();
    const first = text.indexOf("+");
    const second = first < 0 ? -1 : text.indexOf("+", first + 1);
    if (first < 0 || second < 0) {
      throw new AuditLogError("verifier key must have the form name+hash+key");
    }
    const name = text.slice(0, first);
    const hashHex = text.slice(first + 1, second);
    checkName(name);
    if (!/^[0-9a-f]{8}$/.test(hashHex)) {
      throw new AuditLogError("verifier key hash must be 8 lower-case hex digits");
    }
    const raw = b64decode(text.slice(second + 1), "verifier key");
    if (raw.length !== 33 || raw[0] !== ALG_ED25519) {
      throw new AuditLogError("verifier key is not an Ed25519 (0x01) key of 32 bytes");
    }
    const verifier = Verifier.fromPublicKey(name, raw.subarray(1));
    if (verifier.keyHash.toString("hex") !== hashHex) {
      throw new AuditLogError(`verifier key hash ${hashHex} does not match key for ${repr(name)}`);
    }
    return verifier;
  }

  get vkey(): string {
    const key = Buffer.concat([Buffer.from([ALG_ED25519]), this.publicKey]).toString("base64");
    return `${this.name}+${this.keyHash.toString("hex")}+${key}`;
  }

  /** Check one Ed25519 signature; throws `AuditLogError(bad_signature)`. */
  verify(message: Uint8Array, signature: Uint8Array): void {
    let ok = false;
    try {
      const key = createPublicKey({ key: Buffer.concat([ED25519_SPKI_PREFIX, this.publicKey]), format: "der", type: "spki" });
      ok = cryptoVerify(null, message, key, signature);
    } catch {
      ok = false;
    }
    if (!ok) {
      throw new AuditLogError(`signature by ${repr(this.name)} does not verify`, AuditFailure.BAD_SIGNATURE);
    }
  }
}

export interface NoteSignature {
  readonly name: string;
  readonly keyHash: Buffer;
  readonly signature: Buffer;
}

/** A parsed (not yet verified) signed note. */
export class SignedNote {
  private constructor(
    readonly text: string,
    readonly signatures: readonly NoteSignature[],
  ) {
    Object.freeze(this);
  }

  static fromText(note: string | Uint8Array): SignedNote {
    let text: string;
    if (typeof note === "string") {
      text = note;
    } else {
      try {
        text = new TextDecoder("utf-8", { fatal: true }).decode(note);
      } catch {
        throw new AuditLogError("signed note is not valid UTF-8");
      }
    }
    // eslint-disable-next-line no-control-regex
    if (/[\u0000-\u0009\u000b-\u001f\u007f]/.test(text)) {
      throw new AuditLogError("signed note contains control characters");
    }
    const split = text.lastIndexOf("\n\n");
    if (split < 0) {
      throw new AuditLogError("signed note has no blank line before its signatures");
    }
    const body = text.slice(0, split + 1);
    const block = text.slice(split + 2);
    if (!block.endsWith("\n")) {
      throw new AuditLogError("signed note does not end with a newline");
    }
    const signatures: NoteSignature[] = [];
    for (const line of block.slice(0, -1).split("\n")) {
      if (!line.startsWith(SIG_PREFIX)) {
        throw new AuditLogError("signed note signature line does not start with an em dash");
      }
      const fields = line.slice(SIG_PREFIX.length).split(" ");
      if (fields.length !== 2) {
        throw new AuditLogError("signed note signature line is not '— name signature'");
      }
      const [name, blobB64] = fields as [string, string];
      checkName(name);
      const blob = b64decode(blobB64, `signature by ${repr(name)}`);
      if (blob.length < 5) {
        throw new AuditLogError(`signature by ${repr(name)} is too short`);
      }
      signatures.push(Object.freeze({ name, keyHash: blob.subarray(0, 4), signature: blob.subarray(4) }));
    }
    if (signatures.length > MAX_SIGNATURES) {
      throw new AuditLogError(`signed note has more than ${MAX_SIGNATURES} signatures`);
    }
    return new SignedNote(body, Object.freeze(signatures));
  }

  /** Verify against known keys; returns the note's text (what the signatures cover). */
  verify(verifiers: Verifier | readonly Verifier[]): string {
    const known = verifiers instanceof Verifier ? [verifiers] : verifiers;
    const message = Buffer.from(this.text, "utf8");
    const verified: string[] = [];
    for (const sig of this.signatures) {
      const verifier = known.find((v) => v.name === sig.name && equalBytes(v.keyHash, sig.keyHash));
      if (verifier === undefined) {
        continue;
      }
      if (verified.includes(verifier.name)) {
        throw new AuditLogError(`signed note carries two signatures by ${repr(sig.name)}`);
      }
      verifier.verify(message, sig.signature);
      verified.push(verifier.name);
    }
    if (verified.length === 0) {
      const names = [...new Set(known.map((v) => v.name))].sort().join(", ") || "none";
      throw new AuditLogError(`signed note has no signature by a known key (known: ${names})`, AuditFailure.BAD_SIGNATURE);
    }
    return this.text;
  }
}
