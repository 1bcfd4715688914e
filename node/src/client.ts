/**
 * `VeilClient`: attestation first, then sealed calls, each answer opened and its audit receipt
 * verified before it is returned. Nothing but `GetAttestation` leaves this client before the
 * enclave's evidence verified under the policy (fail closed).
 */
import { type WriteStream, createWriteStream, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { dirname, join, resolve, sep } from "node:path";
import * as grpc from "@grpc/grpc-js";
import type { MethodDefinition } from "@grpc/proto-loader";
import { type Checkpoint, verifyCheckpoint, verifyCheckpointConsistency } from "./audit/checkpoint.js";
import { EVIDENCE_FILE, NONCE_FILE, REPLICA_FILE } from "./audit/export.js";
import { SignedNote, type Verifier } from "./audit/note.js";
import { type Receipt, checkReceiptInclusion, verifyReceipt } from "./audit/receipt.js";
import {
  AuditFailure,
  AuditLogError,
  ConfigError,
  ConfigFailure,
  DecryptionError,
  PrivacyBudgetExceeded,
  ProtocolError,
  ProtocolFailure,
  RemoteError,
  RemoteReason,
  clearMessage,
} from "./errors.js";
import { type AttestedEnclave, evidenceFromMessage, verifyEnclave } from "./evidence.js";
import type { AttestationPolicy } from "./policy.js";
import { type Msg, decode, encode, methodDefinitions } from "./proto.js";
import { type ReplicaIdentity, replicaLogVerifier, verifyReplicaCertificate } from "./replica.js";
import { ATTEST_METHOD, MODEL_KEY_LEN, Method, NONCE_LEN, SESSION_SECRET_LEN, Suite, sessionKeys, sha256, sha256Hex } from "./protocol.js";
import {
  type Random,
  SEALED_ERROR_KEY,
  type SealedCall,
  boundedMessage,
  defaultRandom,
  encryptChunk,
  openError,
  openResponse,
  requestDigest,
  sealRequest,
  sealSessionRequest,
} from "./sealing.js";
import { ClientSession } from "./session.js";
import { type Tensor, fromProto, toProto } from "./tensors.js";
import {
  type BudgetInfo,
  type DatasetInfo,
  type ModelInfo,
  type TrainOptions,
  type TrainingEvent,
  type TrainingOutcome,
  budgetInfo,
  datasetInfo,
  modelInfo,
} from "./types.js";

const REASON_KEY = "veil-reason";
const DEFAULT_CHUNK = 1024 * 1024;
const MAX_RECEIPTS = 10_000;
/** Receipt formats this client verifies (protocol 1.2): 2 = v1 and batched v2 receipts. */
export const RECEIPT_VERSION = 2;
const CERTIFICATE_HEADER = "veil-training-certificate/v1";
const CERTIFICATE_KEYS = [
  "model", "noise_multiplier", "sample_rate", "steps", "delta", "epsilon", "accountant",
  "max_grad_norm", "dataset_sha256", "feature_min", "feature_max", "device", "model_sha256",
  "code_measurement",
];

/** Channel TLS: server roots (PEM), and for mutual TLS a client certificate and key. */
export interface TlsOptions {
  rootCertificates?: Buffer;
  clientCertificate?: Buffer;
  clientKey?: Buffer;
}

export interface ClientOptions {
  tenant: string;
  /** The tenant's API key (see `readApiKey` for key files). */
  apiKey: string;
  policy: AttestationPolicy;
  /** Sealing suite (default 1, X25519; 2 is the X-Wing hybrid). */
  suite?: Suite;
  /** TLS or mTLS; plaintext HTTP/2 when absent. */
  tls?: TlsOptions;
  /** Default deadline of each call, in ms (default 60 s; training streams have none). */
  timeoutMs?: number;
  clock?: () => Date;
  random?: Random;
  chunkSize?: number;
  /**
   * Protocol 1.4 (default true): ask the enclave for a sealing session with each one-shot request
   * and, once one is open, seal later calls in it (AES-256-GCM, no HPKE step per call). `false`:
   * every call is sealed one-shot with HPKE.
   */
  sessions?: boolean;
}

/** The session this client seals in (protocol 1.4), for diagnostics: no key material. */
export interface SessionInfo {
  /** Hex of the 16-byte session id (it travels in clear with each request of the session). */
  readonly sessionId: string;
  /** Requests numbered in this session so far. */
  readonly requests: number;
  /** How long the enclave keeps the session unused, in seconds. */
  readonly idleSeconds: number;
}

/** Per-call options: an `AbortSignal` (e.g. `AbortSignal.timeout(5000)`) and/or a deadline. */
export interface CallOptions {
  signal?: AbortSignal;
  timeoutMs?: number;
}

/** An opened answer: its payload, whether it was final, and (replicas) who answered it. */
interface Answer {
  readonly message: Msg;
  readonly final: boolean;
  readonly replica: ReplicaIdentity | undefined;
}

/** A verified receipt and its note, as kept by the client. */
export interface KeptReceipt {
  readonly receipt: Receipt;
  readonly note: string;
}

/** Read an API key file (such as `default.key`): UTF-8, surrounding whitespace stripped. */
export function readApiKey(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (exc) {
    const missing = (exc as NodeJS.ErrnoException).code === "ENOENT";
    throw new ConfigError(
      `API key file ${path} ${missing ? "does not exist" : "cannot be read"}`,
      missing ? ConfigFailure.MISSING_FILE : ConfigFailure.UNREADABLE,
    );
  }
  const key = text.trim();
  if (key.length === 0) {
    throw new ConfigError(`API key file ${path} is empty`, ConfigFailure.MISSING_VALUE);
  }
  return key;
}

interface ServiceErrorLike {
  code?: number;
  details?: string;
  message?: string;
  metadata?: grpc.Metadata;
}

/** A gRPC failure as a `RemoteError`, its detail opened from the sealed trailer when there. */
export function remoteError(exc: unknown, call?: SealedCall, seq = 0): RemoteError {
  if (exc instanceof RemoteError) {
    return exc;
  }
  const err = exc as ServiceErrorLike;
  const name = err.code !== undefined ? (grpc.status[err.code] ?? "UNKNOWN") : "UNKNOWN";
  const reasonValue = err.metadata?.get(REASON_KEY)[0];
  const reason = reasonValue === undefined ? "" : String(reasonValue);
  const sealed = err.metadata?.get(SEALED_ERROR_KEY)[0];
  const details = err.details ?? err.message ?? String(exc);
  if (call === undefined || !Buffer.isBuffer(sealed)) {
    return new RemoteError(name, boundedMessage(details), reason, { cause: exc });
  }
  try {
    const error = openError(call, sealed, seq);
    return new RemoteError(error.code || name, error.message, error.reason, { cause: exc });
  } catch (e) {
    if (!(e instanceof DecryptionError)) throw e;
    return new RemoteError(name, clearMessage(reason), reason, { cause: exc });
  }
}

function isTerminal(exc: unknown): boolean {
  return typeof exc === "object" && exc !== null && "code" in exc && "metadata" in exc;
}

export class VeilClient {
  readonly tenant: string;
  readonly suite: Suite;
  readonly policy: AttestationPolicy;
  private readonly apiKey: string;
  private readonly channel: grpc.Client;
  private readonly timeoutMs: number;
  private readonly clock: () => Date;
  private readonly random: Random;
  private readonly chunkSize: number;
  private readonly sessions: boolean;
  private attested: AttestedEnclave | undefined;
  private current: ClientSession | undefined;
  private readonly kept: KeptReceipt[] = [];
  private readonly replicas: ReplicaIdentity[] = [];
  private readonly certified = new Map<string, ReplicaIdentity>();

  constructor(address: string, options: ClientOptions) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(options.tenant)) {
      throw new ConfigError(`tenant ${JSON.stringify(options.tenant)} must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}`);
    }
    if (!options.apiKey || options.apiKey.trim() !== options.apiKey) {
      throw new ConfigError("apiKey is required, without surrounding whitespace", ConfigFailure.MISSING_VALUE);
    }
    this.tenant = options.tenant;
    this.apiKey = options.apiKey;
    this.policy = options.policy;
    this.suite = options.suite ?? Suite.X25519_SHA256_AES256GCM;
    this.timeoutMs = options.timeoutMs ?? 60_000;
    this.clock = options.clock ?? (() => new Date());
    this.random = options.random ?? defaultRandom;
    this.chunkSize = options.chunkSize ?? DEFAULT_CHUNK;
    this.sessions = options.sessions ?? true;
    const credentials = options.tls
      ? grpc.credentials.createSsl(options.tls.rootCertificates ?? null, options.tls.clientKey ?? null, options.tls.clientCertificate ?? null)
      : grpc.credentials.createInsecure();
    this.channel = new grpc.Client(address, credentials, {
      "grpc.max_receive_message_length": 64 * 1024 * 1024,
      "grpc.max_send_message_length": 64 * 1024 * 1024,
    });
  }

  toString(): string {
    return `VeilClient(tenant=${this.tenant}, suite=${this.suite})`; // never the API key
  }

  /** Close the channel. */
  close(): void {
    this.channel.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** The receipts verified so far (newest last; at most 10 000 kept). */
  get receipts(): readonly KeptReceipt[] {
    return this.kept;
  }

  /** Replicated deployments: the certified replica that answered each receipt, in order. */
  get answeredBy(): readonly ReplicaIdentity[] {
    return this.replicas;
  }

  /** The sealing session later calls go in (protocol 1.4), or `undefined` when none is open. */
  get session(): SessionInfo | undefined {
    const s = this.current;
    if (s === undefined) return undefined;
    return Object.freeze({ sessionId: s.keys.sessionId.toString("hex"), requests: s.used, idleSeconds: s.idleSeconds });
  }

  // -- attestation ------------------------------------------------------------------------

  /** Verify the enclave (or return the cached, unexpired verdict). */
  async attest(options: CallOptions & { force?: boolean } = {}): Promise<AttestedEnclave> {
    if (!options.force && this.attested !== undefined && this.attested.isValidAt(this.clock())) {
      return this.attested;
    }
    this.attested = undefined;
    const nonce = this.random(NONCE_LEN);
    const issuedAt = this.clock();
    let evidence: Msg;
    try {
      evidence = await this.unaryRpc(ATTEST_METHOD, { nonce }, options);
    } catch (exc) {
      throw remoteError(exc);
    }
    const attested = verifyEnclave(evidenceFromMessage(evidence), {
      nonce,
      policy: this.policy,
      now: this.clock(),
      challengeIssuedAt: issuedAt,
    });
    this.attested = attested;
    return attested;
  }

  /**
   * Run `run` with a verified enclave; on `key-rotated`, re-attest and retry once; on
   * `session-expired` (nothing was processed: the enclave no longer holds the session —
   * restarted, another worker or replica, idle too long), retry once opening a new one.
   */
  private async sealed<T>(options: CallOptions, run: (enclave: AttestedEnclave) => Promise<T>): Promise<T> {
    const enclave = await this.attest(options);
    try {
      return await run(enclave);
    } catch (exc) {
      if (exc instanceof RemoteError && exc.reason === RemoteReason.SESSION_EXPIRED) {
        this.current = undefined;
        try {
          return await run(enclave);
        } catch (again) {
          if (!(again instanceof RemoteError) || again.reason !== RemoteReason.KEY_ROTATED) {
            throw again;
          }
        }
      } else if (!(exc instanceof RemoteError) || exc.reason !== RemoteReason.KEY_ROTATED) {
        throw exc;
      }
    }
    this.current = undefined; // a new attestation: the session ends with the old one
    return run(await this.attest({ ...options, force: true }));
  }

  /** Seal a call: in the open session if there is one, else with HPKE (asking for a session). */
  private async seal(enclave: AttestedEnclave, method: Method, typeName: string, message: Msg): Promise<SealedCall> {
    const now = this.clock().getTime();
    const session = this.current;
    if (session !== undefined) {
      const seq = session.take(enclave.claimsDigest, now);
      if (seq !== undefined) {
        return sealSessionRequest(session.keys, seq, {
          method,
          tenant: this.tenant,
          payload: encode(typeName, message),
          timestampMs: now,
          claimsDigest: enclave.claimsDigest,
          random: this.random,
        });
      }
      if (this.current === session) this.current = undefined;
    }
    return sealRequest(enclave, {
      method,
      tenant: this.tenant,
      apiKey: this.apiKey,
      payload: encode(typeName, message),
      timestampMs: now,
      suite: this.suite,
      random: this.random,
      receiptVersion: RECEIPT_VERSION,
      sessionSecret: this.sessions ? this.random(SESSION_SECRET_LEN) : Buffer.alloc(0),
    });
  }

  /**
   * Open an answer, verify its receipt on arrival (final messages), parse the payload. In a
   * replicated deployment (claims with `manifest_sha256`) the receipt is verified under the log
   * key of the replica that answered, certified by the attested coordinator key.
   */
  private open(enclave: AttestedEnclave, call: SealedCall, response: Msg, typeName: string, seq = 0, stream = false): Answer {
    const opened = openResponse(call, response, seq);
    if (!stream && !opened.final) {
      throw new ProtocolError("a unary response must be final", ProtocolFailure.OUT_OF_ORDER);
    }
    let identity: ReplicaIdentity | undefined;
    if (opened.final) {
      let logKey = enclave.logVerifier;
      if (enclave.claims.manifestSha256.length > 0) {
        identity = this.replica(enclave, opened.replica);
        logKey = replicaLogVerifier(identity);
      }
      if (logKey !== undefined) {
        if (!opened.receipt) {
          throw new AuditLogError("enclave answered without an audit receipt", AuditFailure.MISSING);
        }
        const receipt = verifyReceipt(opened.receipt, logKey, {
          tenant: this.tenant,
          requestDigest: call.digest ?? requestDigest(call.request),
          responseDigest: sha256Hex(opened.payload),
        });
        this.kept.push(Object.freeze({ receipt, note: opened.receipt }));
        if (this.kept.length > MAX_RECEIPTS) this.kept.shift();
        if (identity !== undefined) {
          this.replicas.push(identity);
          if (this.replicas.length > MAX_RECEIPTS) this.replicas.shift();
        }
      }
    }
    const message = decode(typeName, opened.payload);
    // The session this one-shot call asked for is open: adopt it once, when its answer is complete
    // (the final message, its receipt verified), so the numbering never starts over.
    if (opened.final && call.sessionSecret !== undefined && call.sessionSecret.length > 0 && opened.sessionIdleSeconds > 0) {
      this.current = new ClientSession(
        sessionKeys(call.sessionSecret, { tenant: this.tenant, claimsDigest: enclave.claimsDigest }),
        enclave.claimsDigest,
        opened.sessionIdleSeconds,
        this.clock().getTime(),
      );
    }
    return { message, final: opened.final, replica: identity };
  }

  /**
   * The replica that answered, certified by the attested coordinator key, its own evidence
   * re-verified under this client's policy (once per certificate).
   */
  private replica(enclave: AttestedEnclave, certificate: Buffer): ReplicaIdentity {
    if (certificate.length === 0) {
      throw new AuditLogError("replicated enclave answered without its replica certificate", AuditFailure.MISSING);
    }
    const cacheKey = sha256Hex(Buffer.concat([enclave.claims.auditLogKey, certificate]));
    let found = this.certified.get(cacheKey);
    if (found === undefined) {
      found = verifyReplicaCertificate(certificate, {
        coordinatorKey: enclave.claims.auditLogKey,
        manifestSha256: enclave.claims.manifestSha256,
        policy: this.policy,
        now: this.clock(),
      });
      if (this.certified.size >= MAX_RECEIPTS) this.certified.clear();
      this.certified.set(cacheKey, found);
    }
    return found;
  }

  /**
   * The audit log key of the enclave that sent an answer: in a replicated deployment the
   * certified key of the replica that answered (`answering()` in Python); elsewhere the
   * attested one.
   */
  private answeringKey(enclave: AttestedEnclave, replica: ReplicaIdentity | undefined): Verifier {
    if (enclave.claims.manifestSha256.length === 0) {
      return this.logKey(enclave);
    }
    if (replica === undefined) {
      throw new AuditLogError("no replica of this deployment has answered yet", AuditFailure.MISSING);
    }
    return replicaLogVerifier(replica);
  }

  private async unary(method: Method, requestType: string, request: Msg, responseType: string, options: CallOptions): Promise<Msg> {
    return (await this.unaryAnswer(method, requestType, request, responseType, options)).message;
  }

  /** A unary sealed call: the opened answer, with the attestation it was verified under. */
  private async unaryAnswer(method: Method, requestType: string, request: Msg, responseType: string, options: CallOptions): Promise<Answer & { enclave: AttestedEnclave }> {
    return this.sealed(options, async (enclave) => {
      const call = await this.seal(enclave, method, requestType, request);
      let answer: Msg;
      try {
        answer = await this.unaryRpc(method, call.request, options);
      } catch (exc) {
        throw remoteError(exc, call);
      }
      return { ...this.open(enclave, call, answer, responseType), enclave };
    });
  }

  // -- gRPC plumbing ----------------------------------------------------------------------

  private definition(path: string): MethodDefinition<Msg, Msg> {
    const def = methodDefinitions().get(path);
    if (def === undefined) throw new Error(`unknown method ${path}`);
    return def;
  }

  private callOptions(options: CallOptions, deadline = true): grpc.CallOptions {
    const ms = options.timeoutMs ?? (deadline ? this.timeoutMs : undefined);
    return ms === undefined ? {} : { deadline: new Date(Date.now() + ms) };
  }

  private static checkSignal(signal: AbortSignal | undefined): void {
    if (signal?.aborted) {
      throw new RemoteError("CANCELLED", "the call was aborted before it started", "", { cause: signal.reason });
    }
  }

  private unaryRpc(path: string, request: Msg, options: CallOptions): Promise<Msg> {
    VeilClient.checkSignal(options.signal);
    const def = this.definition(path);
    return new Promise((resolvePromise, rejectPromise) => {
      const call = this.channel.makeUnaryRequest(
        def.path, def.requestSerialize, def.responseDeserialize, request, new grpc.Metadata(), this.callOptions(options),
        (err, value) => {
          options.signal?.removeEventListener("abort", abort);
          if (err) rejectPromise(err);
          else if (value === undefined) rejectPromise(new ProtocolError("empty answer"));
          else resolvePromise(value);
        },
      );
      const abort = () => call.cancel();
      options.signal?.addEventListener("abort", abort, { once: true });
    });
  }

  private streamRpc(path: string, request: Msg, options: CallOptions, deadline: boolean): grpc.ClientReadableStream<Msg> {
    VeilClient.checkSignal(options.signal);
    const def = this.definition(path);
    const stream = this.channel.makeServerStreamRequest(
      def.path, def.requestSerialize, def.responseDeserialize, request, new grpc.Metadata(), this.callOptions(options, deadline),
    );
    const abort = () => stream.cancel();
    options.signal?.addEventListener("abort", abort, { once: true });
    stream.on("close", () => options.signal?.removeEventListener("abort", abort));
    return stream;
  }

  private async clientStreamRpc(path: string, messages: AsyncIterable<Msg> | Iterable<Msg>, options: CallOptions): Promise<Msg> {
    VeilClient.checkSignal(options.signal);
    const def = this.definition(path);
    let call!: grpc.ClientWritableStream<Msg>;
    const answer = new Promise<Msg>((resolvePromise, rejectPromise) => {
      call = this.channel.makeClientStreamRequest(
        def.path, def.requestSerialize, def.responseDeserialize, new grpc.Metadata(), this.callOptions(options),
        (err, value) => {
          if (err) rejectPromise(err);
          else if (value === undefined) rejectPromise(new ProtocolError("empty answer"));
          else resolvePromise(value);
        },
      );
    });
    const abort = () => call.cancel();
    options.signal?.addEventListener("abort", abort, { once: true });
    try {
      for await (const message of messages) {
        if (!call.write(message)) {
          await new Promise<void>((r) => {
            const done = () => { call.off("drain", done); call.off("close", done); r(); };
            call.on("drain", done);
            call.on("close", done);
          });
        }
      }
      call.end();
      return await answer;
    } finally {
      options.signal?.removeEventListener("abort", abort);
    }
  }

  // -- models and inference -----------------------------------------------------------------

  private async upload(method: Method, header: Msg, headerType: string, key: Buffer, data: Uint8Array, responseType: string, options: CallOptions): Promise<Msg> {
    return this.sealed(options, async (enclave) => {
      const call = await this.seal(enclave, method, headerType, header);
      const size = this.chunkSize;
      function* messages(): Generator<Msg> {
        yield { header: call.request };
        const count = Math.max(1, Math.ceil(data.byteLength / size));
        for (let seq = 0; seq < count; seq++) {
          const piece = data.subarray(seq * size, (seq + 1) * size);
          const final = seq === count - 1;
          yield { chunk: { seq: String(seq), final, ciphertext: encryptChunk(key, call.requestId, seq, final, piece) } };
        }
      }
      let answer: Msg;
      try {
        answer = await this.clientStreamRpc(method, messages(), options);
      } catch (exc) {
        if (exc instanceof ProtocolError) throw exc;
        throw remoteError(exc, call);
      }
      return this.open(enclave, call, answer, responseType).message;
    });
  }

  /** Upload an ONNX model, sealed; the enclave assigns its version. */
  async uploadModel(data: Uint8Array, name: string, options: CallOptions = {}): Promise<ModelInfo> {
    const key = this.random(MODEL_KEY_LEN);
    const header = { name, model_key: key, size: String(data.byteLength), sha256: sha256(data) };
    return modelInfo(await this.upload(Method.UPLOAD_MODEL, header, "UploadHeader", key, data, "ModelInfo", options));
  }

  async listModels(options: CallOptions = {}): Promise<ModelInfo[]> {
    const response = await this.unary(Method.LIST_MODELS, "ListModelsRequest", {}, "ListModelsResponse", options);
    return (response["models"] as Msg[]).map(modelInfo);
  }

  /** Delete `name` (every version) or `name@version`; returns what was deleted. */
  async deleteModel(model: string, options: CallOptions = {}): Promise<ModelInfo[]> {
    const response = await this.unary(Method.DELETE_MODEL, "DeleteModelRequest", { model }, "ListModelsResponse", options);
    return (response["models"] as Msg[]).map(modelInfo);
  }

  /** Sealed inference: `model` is `name` (latest) or `name@version`. */
  async infer(model: string, inputs: Readonly<Record<string, Tensor>>, options: CallOptions & { outputNames?: readonly string[] } = {}): Promise<Record<string, Tensor>> {
    if (Object.keys(inputs).length === 0) {
      throw new ConfigError("inputs must name at least one tensor", ConfigFailure.MISSING_VALUE);
    }
    const request = {
      model,
      inputs: Object.fromEntries(Object.entries(inputs).map(([k, t]) => [k, toProto(t)])),
      output_names: [...(options.outputNames ?? [])],
    };
    const response = await this.unary(Method.INFER, "InferRequest", request, "InferResponse", options);
    const outputs = response["outputs"] as Record<string, Msg>;
    return Object.fromEntries(Object.entries(outputs).map(([k, t]) => [k, fromProto(t)]));
  }

  // -- audit log ----------------------------------------------------------------------------

  private logKey(enclave: AttestedEnclave): Verifier {
    const key = enclave.logVerifier;
    if (key === undefined) {
      throw new AuditLogError("the attested enclave publishes no audit log key", AuditFailure.MISSING);
    }
    return key;
  }

  /** The tenant's checkpoint, verified under the attested log key. */
  async auditCheckpoint(options: CallOptions = {}): Promise<Checkpoint> {
    const answer = await this.unaryAnswer(Method.AUDIT_CHECKPOINT, "CheckpointRequest", {}, "CheckpointResponse", options);
    const response = answer.message;
    const key = this.answeringKey(answer.enclave, answer.replica);
    if (response["vkey"] && response["vkey"] !== key.vkey) {
      throw new AuditLogError("enclave names a log key other than the attested one", AuditFailure.MISMATCH);
    }
    return verifyCheckpoint(String(response["checkpoint"]), key, `${key.name}/${this.tenant}`);
  }

  /** Prove a receipt's record is in the log's current signed tree; returns that checkpoint. */
  async proveReceipt(receipt: Receipt, options: CallOptions = {}): Promise<Checkpoint> {
    const answer = await this.unaryAnswer(
      Method.AUDIT_INCLUSION, "InclusionProofRequest", { leaf_index: String(receipt.leafIndex) }, "InclusionProofResponse", options,
    );
    const response = answer.message;
    const key = this.answeringKey(answer.enclave, answer.replica);
    const checkpoint = verifyCheckpoint(String(response["checkpoint"]), key, receipt.log);
    checkReceiptInclusion(receipt, checkpoint, response["proof"] as Buffer[]);
    return checkpoint;
  }

  /** Prove the log only grew since `old`; returns the newer, verified checkpoint. */
  async auditConsistency(old: Checkpoint, options: CallOptions = {}): Promise<Checkpoint> {
    const answer = await this.unaryAnswer(
      Method.AUDIT_CONSISTENCY, "ConsistencyProofRequest", { first_size: old.size.toString() }, "ConsistencyProofResponse", options,
    );
    const response = answer.message;
    const key = this.answeringKey(answer.enclave, answer.replica);
    const newer = verifyCheckpoint(String(response["checkpoint"]), key, old.origin);
    verifyCheckpointConsistency(old, newer, response["proof"] as Buffer[]);
    return newer;
  }

  /** Iterate a sealed server stream: each message opened at its position; the last must be final. */
  private async *sealedStream(enclave: AttestedEnclave, call: SealedCall, stream: grpc.ClientReadableStream<Msg>, typeName: string, received: { count: number }): AsyncGenerator<Answer> {
    let final = false;
    try {
      for await (const sealed of stream) {
        if (final) {
          throw new ProtocolError("the stream continued after its final message", ProtocolFailure.OUT_OF_ORDER);
        }
        const opened = this.open(enclave, call, sealed as Msg, typeName, received.count, true);
        received.count += 1;
        final = opened.final;
        yield opened;
      }
    } catch (exc) {
      stream.cancel();
      if (isTerminal(exc)) throw remoteError(exc, call, received.count);
      throw exc;
    }
    if (!final) {
      throw new ProtocolError("the stream ended before its final message (truncated)", ProtocolFailure.OUT_OF_ORDER);
    }
  }

  /**
   * Export this tenant's log into `outDir` (new or empty), streamed and checked chunk by chunk
   * against the signed summary, plus the attestation that binds the log key. `since`: a time or
   * a leaf index (the tree size of an earlier export). Returns the directory.
   */
  async exportAudit(outDir: string, options: CallOptions & { since?: Date | number; until?: Date; formats?: readonly string[] } = {}): Promise<string> {
    const since = options.since;
    if (typeof since === "number" && !(Number.isSafeInteger(since) && since >= 0)) {
      throw new ConfigError("since must be a time or a leaf index >= 0");
    }
    const request = {
      since_ms: since instanceof Date ? String(since.getTime()) : "0",
      until_ms: options.until ? String(options.until.getTime()) : "0",
      formats: [...(options.formats ?? [])],
      from_index: typeof since === "number" ? String(since) : "0",
    };
    return this.sealed(options, async (enclave) => {
      const call = await this.seal(enclave, Method.AUDIT_EXPORT_STREAM, "ExportRequest", request);
      const receiver = new ExportReceiver(outDir);
      const received = { count: 0 };
      let replica: ReplicaIdentity | undefined;
      try {
        const stream = this.streamRpc(Method.AUDIT_EXPORT_STREAM, call.request, options, true);
        for await (const part of this.sealedStream(enclave, call, stream, "ExportStreamMessage", received)) {
          await receiver.add(part.message, part.final);
          replica = part.replica;
        }
        // a replica's export: the certificate of the replica whose log it is
        return receiver.finish(enclave, replica?.certificate);
      } catch (exc) {
        receiver.abort();
        throw exc;
      }
    });
  }

  // -- training -----------------------------------------------------------------------------

  /** Upload a dataset (`npz`, `csv` or `parquet` bytes), sealed; it is named by its SHA-256. */
  async uploadDataset(data: Uint8Array, o: { format: "npz" | "csv" | "parquet"; labelColumn?: string } & CallOptions): Promise<DatasetInfo> {
    const key = this.random(MODEL_KEY_LEN);
    const header = { format: o.format, data_key: key, size: String(data.byteLength), sha256: sha256(data), label_column: o.labelColumn ?? "" };
    return datasetInfo(await this.upload(Method.UPLOAD_DATASET, header, "DatasetHeader", key, data, "DatasetInfo", o));
  }

  async budget(dataset: string | DatasetInfo, options: CallOptions = {}): Promise<BudgetInfo> {
    const digest = typeof dataset === "string" ? dataset : dataset.sha256;
    return budgetInfo(await this.unary(Method.GET_BUDGET, "BudgetRequest", { dataset_sha256: digest }, "BudgetResponse", options));
  }

  /**
   * A DP-SGD job on an uploaded dataset: yields progress events in order, then one result
   * (the registered model and its certified training record). A refusal for want of budget
   * throws `PrivacyBudgetExceeded` with what is left.
   */
  async *train(dataset: string | DatasetInfo, o: TrainOptions, options: CallOptions = {}): AsyncGenerator<TrainingEvent, void, undefined> {
    const digest = typeof dataset === "string" ? dataset : dataset.sha256;
    const request = {
      dataset_sha256: digest,
      model_kind: o.model ?? "mlp",
      hidden: [...(o.hidden ?? [])],
      channels: [...(o.channels ?? [])],
      activation: o.activation ?? "",
      norm: o.norm ?? "",
      target_epsilon: o.targetEpsilon,
      delta: o.delta ?? 1e-6,
      max_grad_norm: o.maxGradNorm ?? 1.0,
      epochs: o.epochs ?? 5,
      batch_size: o.batchSize ?? 64,
      learning_rate: o.learningRate ?? 0.5,
      optimizer: o.optimizer ?? "sgd",
      accountant: o.accountant ?? "prv",
      noise: o.noise ?? "secure",
      seed: String(o.seed ?? 0),
      model_name: o.name ?? "trained",
      input_shape: [...(o.inputShape ?? [])],
    };
    const enclave = await this.attest(options);
    for (let attempt = 0; ; attempt++) {
      const call = await this.seal(enclave, Method.TRAIN, "TrainRequest", request);
      const stream = this.streamRpc(Method.TRAIN, call.request, options, false);
      const received = { count: 0 };
      try {
        for await (const part of this.sealedStream(enclave, call, stream, "TrainEvent", received)) {
          const event = part.message;
          if (event["progress"] != null) {
            const p = event["progress"] as Msg;
            yield { type: "progress", progress: Object.freeze({ epoch: Number(p["epoch"]), step: Number(p["step"]), totalSteps: Number(p["total_steps"]), loss: Number(p["loss"]), epsilon: Number(p["epsilon"]) }) };
            continue;
          }
          if (event["result"] == null || !part.final) {
            throw new ProtocolError("training result arrived before the end of the stream", ProtocolFailure.OUT_OF_ORDER);
          }
          yield { type: "result", outcome: this.outcome(event["result"] as Msg, enclave, part.replica) };
        }
        return;
      } catch (exc) {
        if (exc instanceof RemoteError && exc.reason === RemoteReason.SESSION_EXPIRED && attempt === 0 && received.count === 0) {
          // the enclave forgot the session before starting anything: open a new one, once
          this.current = undefined;
          continue;
        }
        if (exc instanceof RemoteError && exc.reason === RemoteReason.BUDGET_EXHAUSTED) {
          const left = await this.budget(digest, options);
          throw new PrivacyBudgetExceeded(
            `${exc.detail}; the dataset has epsilon ${left.epsilonRemaining.toPrecision(4)} and delta ${left.deltaRemaining.toPrecision(3)} left`,
            { epsilon: left.epsilonRemaining, delta: left.deltaRemaining },
          );
        }
        throw exc;
      }
    }
  }

  private outcome(result: Msg, enclave: AttestedEnclave, replica: ReplicaIdentity | undefined): TrainingOutcome {
    const key = this.answeringKey(enclave, replica);
    const certificate = String(result["certificate"]);
    const note = SignedNote.fromText(certificate);
    const nl = note.text.indexOf("\n");
    if (note.text.slice(0, nl) !== CERTIFICATE_HEADER) {
      throw new AuditLogError("not a Veil training certificate");
    }
    let record: Record<string, unknown>;
    try {
      record = JSON.parse(note.text.slice(nl + 1)) as Record<string, unknown>;
    } catch {
      throw new AuditLogError("training certificate body is not JSON");
    }
    if (typeof record !== "object" || record === null || Array.isArray(record)) {
      throw new AuditLogError("training certificate body is not a JSON object");
    }
    const missing = CERTIFICATE_KEYS.filter((k) => !(k in record));
    if (missing.length > 0) {
      throw new AuditLogError(`training certificate lacks ${missing.join(", ")}`);
    }
    note.verify(key);
    if (record["code_measurement"] !== enclave.measurement) {
      throw new AuditLogError("certificate names a code measurement other than the attested one", AuditFailure.MISMATCH);
    }
    const model = modelInfo(result["model"] as Msg);
    if (record["model_sha256"] !== model.sha256) {
      throw new ProtocolError("training certificate names another model than was registered");
    }
    return Object.freeze({ model, record: Object.freeze(record), certificate });
  }
}

/** Writes a streamed export to disk as its opened messages arrive (`ExportReceiver` in Python). */
class ExportReceiver {
  private readonly dir: string;
  private readonly sizes = new Map<string, number>();
  private readonly hashes = new Map<string, ReturnType<typeof createHash>>();
  private name = "";
  private file: WriteStream | undefined;
  private done = false;

  constructor(outDir: string) {
    this.dir = resolve(outDir);
    try {
      mkdirSync(this.dir, { recursive: true });
    } catch (exc) {
      throw new ConfigError(`export directory ${outDir} cannot be used (${(exc as NodeJS.ErrnoException).code})`, ConfigFailure.UNREADABLE);
    }
    if (readdirSync(this.dir).length > 0) {
      throw new AuditLogError(`export directory ${outDir} is not empty`);
    }
  }

  private target(name: string): string {
    const target = resolve(this.dir, name);
    if (!target.startsWith(this.dir + sep)) {
      throw new AuditLogError(`export file name ${JSON.stringify(name)} leaves the export directory`);
    }
    mkdirSync(dirname(target), { recursive: true });
    return target;
  }

  async add(message: Msg, final: boolean): Promise<void> {
    if (this.done) {
      throw new ProtocolError("export stream continued after its summary");
    }
    const kind = message["kind"] as string | undefined;
    if (final !== (kind === "summary")) {
      throw new ProtocolError("export stream must end with exactly one summary");
    }
    if (kind === "chunk") {
      await this.chunk(message["chunk"] as Msg);
    } else {
      await this.summary(message["summary"] as Msg);
    }
  }

  private async chunk(chunk: Msg): Promise<void> {
    const name = String(chunk["name"]);
    if (name !== this.name) {
      if (this.sizes.has(name)) {
        throw new ProtocolError(`export file ${JSON.stringify(name)} arrived in two runs`);
      }
      await this.closeFile();
      this.file = createWriteStream(this.target(name), { flags: "wx" });
      this.name = name;
      this.sizes.set(name, 0);
      this.hashes.set(name, createHash("sha256"));
    }
    const expected = this.sizes.get(name) as number;
    if (String(chunk["offset"]) !== String(expected)) {
      throw new ProtocolError(`export file ${JSON.stringify(name)}: chunk at ${chunk["offset"]}, expected ${expected}`);
    }
    const data = chunk["data"] as Buffer;
    const file = this.file as WriteStream;
    if (!file.write(data)) {
      await new Promise<void>((r) => file.once("drain", () => r()));
    }
    this.sizes.set(name, expected + data.length);
    this.hashes.get(name)?.update(data);
  }

  private async summary(summary: Msg): Promise<void> {
    await this.closeFile();
    const files = summary["files"] as Msg[];
    const listed = new Map(files.map((f) => [String(f["name"]), f]));
    if (listed.size !== files.length) {
      throw new ProtocolError("export summary lists a file twice");
    }
    for (const name of this.sizes.keys()) {
      if (!listed.has(name)) {
        throw new AuditLogError(`export file ${JSON.stringify(name)} is not in the signed summary`);
      }
    }
    for (const [name, entry] of listed) {
      if (!this.sizes.has(name)) {
        if (String(entry["size"]) !== "0") {
          throw new AuditLogError(`export file ${JSON.stringify(name)} never arrived`);
        }
        const target = this.target(name);
        await new Promise<void>((r, j) => createWriteStream(target, { flags: "wx" }).on("error", j).end(() => r()));
        this.sizes.set(name, 0);
        this.hashes.set(name, createHash("sha256"));
      }
      const digest = this.hashes.get(name)?.copy().digest() as Buffer;
      if (String(this.sizes.get(name)) !== String(entry["size"]) || !digest.equals(entry["sha256"] as Buffer)) {
        throw new AuditLogError(`export file ${JSON.stringify(name)} does not match the signed summary`);
      }
    }
    this.done = true;
  }

  private async closeFile(): Promise<void> {
    const file = this.file;
    this.file = undefined;
    if (file !== undefined) {
      await new Promise<void>((r) => file.end(() => r()));
    }
  }

  /** After the summary: add the evidence that binds the log key; the export is complete. */
  finish(enclave: AttestedEnclave, replicaCertificate?: Buffer): string {
    if (!this.done) {
      throw new ProtocolError("export stream ended without its summary", ProtocolFailure.OUT_OF_ORDER);
    }
    mkdirSync(join(this.dir, "attestation"), { recursive: true });
    const evidence = encode("AttestationEvidence", enclave.evidence.message);
    writeFileSyncExclusive(join(this.dir, EVIDENCE_FILE), evidence);
    writeFileSyncExclusive(join(this.dir, NONCE_FILE), enclave.nonce);
    if (replicaCertificate !== undefined && replicaCertificate.length > 0) {
      writeFileSyncExclusive(join(this.dir, REPLICA_FILE), replicaCertificate);
    }
    return this.dir;
  }

  /** Remove what was written, leaving the directory empty for a retry. */
  abort(): void {
    this.file?.destroy();
    this.file = undefined;
    for (const name of this.sizes.keys()) {
      rmSync(join(this.dir, name), { force: true });
    }
  }
}

function writeFileSyncExclusive(path: string, data: Uint8Array): void {
  writeFileSync(path, data, { flag: "wx" });
}

/**
 * For `verifyExport`: verify the export's saved evidence under `policy` and return the log key
 * it binds (the key epoch may have ended since).
 */
export function attestationCheck(policy: AttestationPolicy, now: () => Date = () => new Date()): (directory: string) => string {
  return (directory: string) => {
    let raw: Buffer;
    let nonce: Buffer;
    try {
      raw = readFileSync(join(directory, EVIDENCE_FILE));
      nonce = readFileSync(join(directory, NONCE_FILE));
    } catch {
      throw new AuditLogError("export has no attestation evidence (No such file or directory)");
    }
    let message: Msg;
    try {
      message = decode("AttestationEvidence", raw);
    } catch {
      throw new AuditLogError(`${EVIDENCE_FILE} is not valid attestation evidence`);
    }
    if (nonce.length !== NONCE_LEN) {
      throw new AuditLogError(`${NONCE_FILE} is ${nonce.length} bytes, expected ${NONCE_LEN}`);
    }
    const enclave = verifyEnclave(evidenceFromMessage(message), { nonce, policy, now: now(), requireUnexpired: false });
    if (enclave.claims.manifestSha256.length > 0) {
      // a replica: its own log key, certified by the coordinator the evidence binds
      let certificate: Buffer;
      try {
        certificate = readFileSync(join(directory, REPLICA_FILE));
      } catch {
        throw new AuditLogError(`a replica's export has no ${REPLICA_FILE}`, AuditFailure.MISSING);
      }
      const replica = verifyReplicaCertificate(certificate, {
        coordinatorKey: enclave.claims.auditLogKey,
        manifestSha256: enclave.claims.manifestSha256,
        policy,
        now: now(),
      });
      return replicaLogVerifier(replica).vkey;
    }
    const key = enclave.logVerifier;
    if (key === undefined) {
      throw new AuditLogError("the attested enclave publishes no audit log key", AuditFailure.MISSING);
    }
    return key.vkey;
  };
}

