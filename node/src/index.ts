/**
 * `@veil-ai/client`: a Node.js client for Veil enclaves, byte-compatible with the Python SDK
 * (docs/PROTOCOL.md). Verify first (SEV-SNP under pinned AMD roots), then seal every request.
 */
export { VeilClient, attestationCheck, readApiKey, remoteError, RECEIPT_VERSION } from "./client.js";
export type { CallOptions, ClientOptions, KeptReceipt, SessionInfo, TlsOptions } from "./client.js";
export {
  AttestationError,
  AttestationFailure,
  AuditFailure,
  AuditLogError,
  CLEAR_MESSAGES,
  ConfigError,
  ConfigFailure,
  DecryptionError,
  PrivacyBudgetExceeded,
  ProtocolError,
  ProtocolFailure,
  RemoteError,
  RemoteReason,
  VeilError,
  clearMessage,
  parseRemoteReason,
} from "./errors.js";
export { AttestationPolicy, amdRoots, trustRootFromPem } from "./policy.js";
export type { PolicyOptions, TrustRoot } from "./policy.js";
export { AttestedEnclave, evidenceFromMessage, parseClaims, verifyEnclave } from "./evidence.js";
export {
  AttestedCoordinator,
  CERTIFICATE_CONTEXT,
  MANIFEST_CONTEXT,
  attestCoordinator,
  deterministicEvidence,
  parseManifest,
  replicaLogVerifier,
  verifyCoordinator,
  verifyManifest,
  verifyReplicaCertificate,
} from "./replica.js";
export type { CoordinatorOptions, Manifest, ReplicaIdentity, VerifyCertificateOptions } from "./replica.js";
export type { EnclaveClaims, Evidence, VerifyEnclaveOptions } from "./evidence.js";
export { SnpReport } from "./snp/report.js";
export type { Product, TcbVersion } from "./snp/report.js";
export { loadCertificates, snpCertChain, snpCertChainFrom } from "./snp/certs.js";
export type { SnpCertChain } from "./snp/certs.js";
export { verifySnpReport } from "./snp/verify.js";
export type { VerifiedSnpReport, VerifyOptions } from "./snp/verify.js";
export {
  MAX_SESSION_SEQ,
  Method,
  SessionKeys,
  Suite,
  chunkAad,
  chunkNonce,
  claimsDigest,
  reportDataFor,
  requestInfo,
  responseAad,
  sessionAad,
  sessionKeys,
  sessionNonce,
  sessionRequestDigest,
} from "./protocol.js";
export {
  decryptChunk,
  encryptChunk,
  hpkeSeal,
  openError,
  openResponse,
  requestDigest,
  sealRequest,
  sealSessionRequest,
} from "./sealing.js";
export type { ErrorBody, OpenedResponse, SealedCall, SealOptions, SessionSealOptions } from "./sealing.js";
export { Verifier, SignedNote, keyHash } from "./audit/note.js";
export { parseCheckpoint, verifyCheckpoint, verifyCheckpointConsistency } from "./audit/checkpoint.js";
export type { Checkpoint } from "./audit/checkpoint.js";
export { emptyRoot, hashChildren, hashLeaf, rootFromLeafHashes, verifyConsistency, verifyInclusion } from "./audit/merkle.js";
export { canonicalJson, checkReceiptInclusion, parseReceiptLine, verifyReceipt } from "./audit/receipt.js";
export type { Receipt } from "./audit/receipt.js";
export { verifyExport } from "./audit/export.js";
export type { VerifiedExport, VerifyExportOptions } from "./audit/export.js";
export { tensor, values, ITEM_SIZE } from "./tensors.js";
export type { DType, Tensor, TypedData } from "./tensors.js";
export type {
  BudgetInfo,
  DatasetInfo,
  ModelInfo,
  TensorSpec,
  TrainOptions,
  TrainingEvent,
  TrainingOutcome,
  TrainingProgress,
} from "./types.js";
