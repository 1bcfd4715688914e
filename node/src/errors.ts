/**
 * Veil's error tree, the same as the Python SDK's (`veil.sdk.errors`):
 *
 *     VeilError
 *     ├── AttestationError        evidence did not verify, or did not satisfy the policy
 *     ├── DecryptionError         a sealed message did not open (one opaque error, no oracle)
 *     ├── ProtocolError           a message was malformed, out of order, or not well formed
 *     ├── AuditLogError           the audit log, a checkpoint, a receipt or a proof did not verify
 *     ├── PrivacyBudgetExceeded   a training job would spend more epsilon or delta than is left
 *     ├── ConfigError             an argument, key or file is missing or invalid
 *     └── RemoteError             the enclave answered with an error status, or the channel failed
 *
 * Every family carries a machine-readable `reason` whose string values are the Python enums'.
 */

export class VeilError extends Error {
  override name = "VeilError";
}

/** Why attestation evidence was rejected (`veil.sdk.AttestationFailure`). */
export const AttestationFailure = {
  MALFORMED: "malformed",
  BAD_SIGNATURE: "bad_signature",
  UNTRUSTED_ROOT: "untrusted_root",
  BAD_CHAIN: "bad_chain",
  CERT_EXPIRED: "cert_expired",
  REVOKED: "revoked",
  CERT_MISMATCH: "cert_mismatch",
  DEBUG_ENCLAVE: "debug_enclave",
  MEASUREMENT_MISMATCH: "measurement_mismatch",
  TCB_TOO_LOW: "tcb_too_low",
  VMPL_NOT_ALLOWED: "vmpl_not_allowed",
  STALE_NONCE: "stale_nonce",
  UNBOUND_KEY: "unbound_key",
  EXPIRED: "expired",
  POLICY: "policy",
  UNSUPPORTED: "unsupported",
} as const;
export type AttestationFailure = (typeof AttestationFailure)[keyof typeof AttestationFailure];

export class AttestationError extends VeilError {
  override name = "AttestationError";
  readonly reason: AttestationFailure;
  readonly detail: string;
  constructor(reason: AttestationFailure, message: string) {
    super(`attestation rejected (${reason}): ${message}`);
    this.reason = reason;
    this.detail = message;
  }
}

/** A sealed message could not be opened. Deliberately says nothing about which check failed. */
export class DecryptionError extends VeilError {
  override name = "DecryptionError";
  constructor(message = "sealed message could not be opened") {
    super(message);
  }
}

export const ProtocolFailure = {
  MALFORMED: "malformed",
  OUT_OF_ORDER: "out_of_order",
  REPLAYED: "replayed",
  STALE: "stale",
  UNSUPPORTED: "unsupported",
} as const;
export type ProtocolFailure = (typeof ProtocolFailure)[keyof typeof ProtocolFailure];

export class ProtocolError extends VeilError {
  override name = "ProtocolError";
  readonly reason: ProtocolFailure;
  constructor(message: string, reason: ProtocolFailure = ProtocolFailure.MALFORMED) {
    super(message);
    this.reason = reason;
  }
}

export const AuditFailure = {
  MALFORMED: "malformed",
  BAD_SIGNATURE: "bad_signature",
  BAD_PROOF: "bad_proof",
  MISMATCH: "mismatch",
  MISSING: "missing",
  UNAVAILABLE: "unavailable",
} as const;
export type AuditFailure = (typeof AuditFailure)[keyof typeof AuditFailure];

export class AuditLogError extends VeilError {
  override name = "AuditLogError";
  readonly reason: AuditFailure;
  constructor(message: string, reason: AuditFailure = AuditFailure.MALFORMED) {
    super(message);
    this.reason = reason;
  }
}

export class PrivacyBudgetExceeded extends VeilError {
  override name = "PrivacyBudgetExceeded";
  readonly remainingEpsilon: number | undefined;
  readonly remainingDelta: number | undefined;
  constructor(message: string, remaining: { epsilon?: number; delta?: number } = {}) {
    super(message);
    this.remainingEpsilon = remaining.epsilon;
    this.remainingDelta = remaining.delta;
  }
}

export const ConfigFailure = {
  MISSING_FILE: "missing_file",
  UNREADABLE: "unreadable",
  MALFORMED: "malformed",
  INVALID_VALUE: "invalid_value",
  MISSING_VALUE: "missing_value",
  UNSUPPORTED: "unsupported",
} as const;
export type ConfigFailure = (typeof ConfigFailure)[keyof typeof ConfigFailure];

export class ConfigError extends VeilError {
  override name = "ConfigError";
  readonly reason: ConfigFailure;
  constructor(message: string, reason: ConfigFailure = ConfigFailure.INVALID_VALUE) {
    super(message);
    this.reason = reason;
  }
}

/**
 * The enclave's `veil-reason` (docs/PROTOCOL.md section 7), one vocabulary with the enclave's
 * status table and `veil.sdk.RemoteReason`. `NONE`: the status came without a reason;
 * `UNKNOWN`: a reason this version does not know (treat it by the status code).
 */
export const RemoteReason = {
  UNAUTHENTICATED: "unauthenticated",
  NOT_FOUND: "not-found",
  TOO_LARGE: "too-large",
  TIMEOUT: "timeout",
  MEMORY_LIMIT: "memory-limit",
  OVERLOADED: "overloaded",
  STORAGE_FULL: "storage-full",
  BUDGET_EXHAUSTED: "budget-exhausted",
  KEY_ROTATED: "key-rotated",
  STALE_REQUEST: "stale-request",
  REPLAY: "replay",
  /** Protocol 1.4: the enclave holds no such session (nothing was processed; the client opens a new one and retries once). */
  SESSION_EXPIRED: "session-expired",
  UNDECRYPTABLE: "undecryptable",
  INVALID_INPUT: "invalid-input",
  MALFORMED: "malformed",
  ATTESTATION: "attestation",
  AUDIT_UNAVAILABLE: "audit-unavailable",
  INTERNAL: "internal",
  NONE: "",
  UNKNOWN: "unknown",
} as const;
export type RemoteReason = (typeof RemoteReason)[keyof typeof RemoteReason];

const KNOWN_REASONS: ReadonlySet<string> = new Set(Object.values(RemoteReason));

/** The member for a received `veil-reason`; `UNKNOWN` for one this version lacks. */
export function parseRemoteReason(text: string): RemoteReason {
  return KNOWN_REASONS.has(text) ? (text as RemoteReason) : RemoteReason.UNKNOWN;
}

/** The fixed clear status message for each reason (docs/PROTOCOL.md section 7). */
export const CLEAR_MESSAGES: Readonly<Partial<Record<RemoteReason, string>>> = Object.freeze({
  unauthenticated: "invalid API key or unknown tenant",
  "not-found": "not found",
  "too-large": "too large",
  timeout: "timeout",
  "memory-limit": "memory limit exceeded",
  overloaded: "overloaded",
  "storage-full": "storage full",
  "budget-exhausted": "privacy budget exhausted",
  "key-rotated": "sealed to a key the enclave no longer holds: re-attest",
  "stale-request": "request outside the time window",
  replay: "request id was already used",
  "session-expired": "unknown or expired session: open a new one",
  undecryptable: "sealed message could not be opened",
  "invalid-input": "invalid input",
  malformed: "malformed request",
  attestation: "attestation failed",
  "audit-unavailable": "audit log unavailable",
  internal: "internal error",
});

export function clearMessage(reason: string): string {
  return CLEAR_MESSAGES[parseRemoteReason(reason)] ?? "error";
}

/** The enclave answered with a gRPC error status, or the channel to it failed. */
export class RemoteError extends VeilError {
  override name = "RemoteError";
  /** The gRPC status name, e.g. `"NOT_FOUND"`. */
  readonly code: string;
  readonly reason: RemoteReason;
  readonly detail: string;
  constructor(code: string, message: string, reason = "", options?: { cause?: unknown }) {
    super(`${code}: ${message}`, options);
    this.code = code;
    this.detail = message;
    this.reason = parseRemoteReason(reason);
  }
}
