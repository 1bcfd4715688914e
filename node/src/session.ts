/**
 * The client's side of a sealing session (protocol 1.4, docs/PROTOCOL.md 4.5): its keys, the
 * numbering of its requests, and when to stop using it (`ClientSession` in the Python SDK).
 */
import { equalBytes } from "./bytes.js";
import { MAX_SESSION_SEQ, type SessionKeys } from "./protocol.js";

/**
 * Stop using a session a little before the enclave would forget it, so a request in flight at the
 * boundary is not refused (which would only cost a retry).
 */
export const IDLE_MARGIN = 0.8;

/** An open session with one attested enclave; `take` numbers its requests. */
export class ClientSession {
  constructor(
    readonly keys: SessionKeys,
    /** The digest of the attested claims the session was opened under. */
    readonly claimsDigest: Buffer,
    /** How long the enclave keeps the session unused (`ResponseBody.session_idle_seconds`). */
    readonly idleSeconds: number,
    /** When it was last used, ms since the epoch (the client's clock). */
    private lastUsedMs: number,
    /** Request numbers already used (0 for a new session). */
    private seq = 0,
  ) {}

  /** Request numbers handed out so far (the last one taken). */
  get used(): number {
    return this.seq;
  }

  /**
   * The next request number, or `undefined` if this session should not be used any more (another
   * attestation, idle for more than 0.8 × its idle time, numbers used up).
   */
  take(claimsDigest: Uint8Array, nowMs: number): number | undefined {
    if (
      !equalBytes(claimsDigest, this.claimsDigest) ||
      nowMs - this.lastUsedMs > this.idleSeconds * IDLE_MARGIN * 1000 ||
      this.seq >= MAX_SESSION_SEQ
    ) {
      return undefined;
    }
    this.seq += 1;
    this.lastUsedMs = nowMs;
    return this.seq;
  }
}
