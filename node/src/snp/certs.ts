/** Certificates: PEM bundles or DER, sorted into a SEV-SNP chain by structure. */
import { X509Certificate, createHash } from "node:crypto";
import { AttestationError, AttestationFailure } from "../errors.js";

const PEM_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** One or more certificates from PEM (a bundle) or a single DER blob. */
export function loadCertificates(data: Uint8Array | string): X509Certificate[] {
  const buf = typeof data === "string" ? Buffer.from(data, "utf8") : Buffer.from(data);
  const text = buf.toString("latin1");
  const pem = text.includes("-----BEGIN CERTIFICATE-----");
  try {
    if (pem) {
      const blocks = text.match(PEM_BLOCK) ?? [];
      if (blocks.length === 0) {
        throw new Error("no complete PEM block");
      }
      return blocks.map((b) => new X509Certificate(b));
    }
    return [new X509Certificate(buf)];
  } catch {
    throw new AttestationError(
      AttestationFailure.MALFORMED,
      `certificate could not be parsed: not a well-formed ${pem ? "PEM" : "DER"} X.509 certificate`,
    );
  }
}

export function isSelfSigned(cert: X509Certificate): boolean {
  return cert.subject === cert.issuer;
}

export function isP384(cert: X509Certificate): boolean {
  const key = cert.publicKey;
  return key.asymmetricKeyType === "ec" && key.asymmetricKeyDetails?.namedCurve === "secp384r1";
}

export function isEc(cert: X509Certificate): boolean {
  return cert.publicKey.asymmetricKeyType === "ec";
}

/** `child` names `issuer` as its issuer and carries a valid signature by it. */
export function issuedBy(child: X509Certificate, issuer: X509Certificate): boolean {
  if (child.issuer !== issuer.subject) {
    return false;
  }
  try {
    return child.verify(issuer.publicKey);
  } catch {
    return false;
  }
}

export function fingerprint(cert: X509Certificate): string {
  return createHash("sha256").update(cert.raw).digest("hex");
}

/** The certificates that come with a report: VCEK, and optionally ASK and ARK. */
export interface SnpCertChain {
  readonly vcek: X509Certificate;
  readonly ask: X509Certificate | undefined;
  readonly ark: X509Certificate | undefined;
}

/** Sort a bag of certificates: self-signed = ARK, the EC key = VCEK, the other one = ASK. */
export function snpCertChain(certs: readonly X509Certificate[]): SnpCertChain {
  const ark = certs.find(isSelfSigned);
  const vcek = certs.find(isEc);
  if (vcek === undefined) {
    throw new AttestationError(AttestationFailure.BAD_CHAIN, "no VCEK (EC P-384 leaf) in the chain");
  }
  const ask = certs.find((c) => c !== ark && c !== vcek);
  return Object.freeze({ vcek, ask, ark });
}

/** A chain from PEM or DER blobs (a bundle of VCEK, ASK, ARK, or a VCEK plus an ASK/ARK file). */
export function snpCertChainFrom(...blobs: (Uint8Array | string)[]): SnpCertChain {
  return snpCertChain(blobs.flatMap((b) => loadCertificates(b)));
}
