// Replays tests/vectors/protocol (docs/PROTOCOL.md section 9) and the real SEV-SNP verdicts.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { CipherSuite, HkdfSha256, Aes256Gcm } from "@hpke/core";
import { XWing } from "@hpke/hybridkem-x-wing";
import {
  AttestationError,
  AttestationPolicy,
  AttestedEnclave,
  DecryptionError,
  MAX_SESSION_SEQ,
  ProtocolError,
  Suite,
  Verifier,
  amdRoots,
  chunkAad,
  chunkNonce,
  claimsDigest,
  encryptChunk,
  hpkeSeal,
  openError,
  openResponse,
  parseClaims,
  reportDataFor,
  requestDigest,
  requestInfo,
  responseAad,
  sealSessionRequest,
  sessionAad,
  sessionKeys,
  sessionNonce,
  sessionRequestDigest,
  snpCertChainFrom,
  verifyConsistency,
  verifyInclusion,
  verifyReceipt,
  verifySnpReport,
} from "../src/index.js";
import { decode, encode } from "../src/proto.js";
import type { SealedCall } from "../src/sealing.js";
import { AMD_ROOT_PEMS } from "../src/snp/amd-roots.js";
import { PROTOCOL, REPO, VECTORS } from "./paths.js";

const h = (s: string) => Buffer.from(s, "hex");
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Doc = Record<string, any>;
const load = (name: string): Doc => JSON.parse(readFileSync(join(PROTOCOL, name), "utf8")) as Doc;

describe("suite 1 worked example", () => {
  const doc = load("suite1.json");
  const att = doc["attestation"];
  const req = doc["request"];
  const res = doc["response"];
  const call: SealedCall = {
    request: decode("SealedRequest", h(req.sealed_request)),
    method: req.method,
    requestId: h(req.request_id),
    responseKey: h(req.response_key),
  };

  test("claims digest, REPORT_DATA and info", () => {
    const claims = parseClaims(h(att.claims));
    assert.deepEqual(claims.keys.get(Suite.X25519_SHA256_AES256GCM), h(att.enclave_x25519_public));
    assert.equal(claims.auditLogOrigin, "veil-enclave");
    assert.deepEqual(claimsDigest(h(att.claims)), h(att.claims_digest));
    assert.deepEqual(reportDataFor(h(att.nonce), h(att.claims_digest)), h(att.report_data));
    const info = requestInfo({
      method: req.method,
      tenant: req.tenant,
      requestId: h(req.request_id),
      timestampMs: req.timestamp_ms,
      claimsDigest: h(att.claims_digest),
    });
    assert.equal(info.toString("hex"), req.info);
  });

  test("request body, HPKE seal with the fixed ephemeral key, sealed request", async () => {
    const body = encode("RequestBody", { response_key: h(req.response_key), api_key: req.api_key, payload: h(req.payload) });
    assert.equal(body.toString("hex"), req.request_body);
    const sealed = await hpkeSeal(Suite.X25519_SHA256_AES256GCM, h(att.enclave_x25519_public), h(req.info), body, h(req.hpke_ephemeral_ikm));
    assert.equal(sealed.toString("hex"), req.sealed);
    const request = encode("SealedRequest", {
      version: 1, suite: 1, tenant: req.tenant, request_id: h(req.request_id),
      timestamp_ms: String(req.timestamp_ms), claims_digest: h(att.claims_digest), sealed,
    });
    assert.equal(request.toString("hex"), req.sealed_request);
  });

  test("response AAD, opening, and the receipt verified", () => {
    assert.equal(responseAad(req.method, h(req.request_id), 0, true).toString("hex"), res.aad);
    const opened = openResponse(call, decode("SealedResponse", h(res.sealed_response)));
    assert.equal(opened.payload.toString("hex"), res.payload);
    assert.equal(opened.receipt, res.receipt);
    const key = Verifier.fromVkey(att.audit_log_vkey);
    const receipt = verifyReceipt(opened.receipt, key, {
      tenant: req.tenant,
      requestDigest: req.request_digest,
      responseDigest: res.response_digest,
    });
    assert.equal(receipt.modelDigest, res.model_digest);
    assert.equal(receipt.leafIndex, 41);
    assert.throws(() => verifyReceipt(opened.receipt, key, { requestDigest: "00".repeat(32) }), /does not match/);
    const forged = opened.receipt.replace('"leaf_index":41', '"leaf_index":42');
    assert.throws(() => verifyReceipt(forged, key), /does not verify/);
    // a response moved to another position, or with a flipped bit, does not open
    const moved = { ...decode("SealedResponse", h(res.sealed_response)), seq: "1" };
    assert.throws(() => openResponse(call, moved, 1), DecryptionError);
  });

  test("sealed error opens at its place only", () => {
    const error = openError(call, h(doc["sealed_error"].trailer));
    assert.deepEqual([error.code, error.reason, error.message], ["NOT_FOUND", "not-found", "model 'credit' not found"]);
    assert.throws(() => openError(call, h(doc["sealed_error"].trailer), 1), DecryptionError);
  });

  test("upload chunks: nonces, AADs, ciphertexts", () => {
    const up = doc["upload"];
    for (const c of up.chunks) {
      assert.equal(chunkNonce(c.seq).toString("hex"), c.nonce);
      assert.equal(chunkAad(h(up.request_id), c.seq, c.final).toString("hex"), c.aad);
      assert.equal(encryptChunk(h(up.model_key), h(up.request_id), c.seq, c.final, h(c.plaintext)).toString("hex"), c.ciphertext);
    }
  });
});

describe("sessions (1.4): keys, requests at numbers 1, 2 and 2^32 - 1, a response", () => {
  const doc = load("sessions.json");
  const digest = h(doc["claims_digest"]);
  const keys = sessionKeys(h(doc["session_secret"]), { tenant: doc["tenant"], claimsDigest: digest });

  test("the opening request carries the secret; its answer says the session is open", () => {
    assert.deepEqual(digest, h(load("suite1.json")["attestation"].claims_digest));
    const body = decode("RequestBody", h(doc["opening"].request_body));
    assert.deepEqual(body["session_secret"], h(doc["session_secret"]));
    assert.equal((body["payload"] as Buffer).length, 0); // ListModelsRequest {}: no field on the wire
    const again = encode("RequestBody", {
      response_key: body["response_key"], api_key: body["api_key"], receipt_version: 2, session_secret: h(doc["session_secret"]),
    });
    assert.equal(again.toString("hex"), doc["opening"].request_body);
    const answer = decode("ResponseBody", h(doc["opening"].response_body));
    assert.equal(answer["session_idle_seconds"], 600);
    assert.equal(doc["opening"].session_idle_seconds, 600);
  });

  test("HKDF: session id, request key and IV, response key", () => {
    assert.equal(Buffer.concat([keys.sessionId, keys.requestKey, keys.requestIv, keys.responseKey]).toString("hex"), doc["okm"]);
    assert.equal(keys.sessionId.toString("hex"), doc["session_id"]);
    assert.equal(keys.requestKey.toString("hex"), doc["request_key"]);
    assert.equal(keys.requestIv.toString("hex"), doc["request_iv"]);
    assert.equal(keys.responseKey.toString("hex"), doc["response_key"]);
    assert.ok(!String(keys).includes(doc["request_key"]) && !JSON.stringify(keys).includes(doc["response_key"]));
    const other = sessionKeys(h(doc["session_secret"]), { tenant: "acme", claimsDigest: digest });
    assert.notDeepEqual(other.sessionId, keys.sessionId);
    assert.throws(() => sessionKeys(h(doc["session_secret"]).subarray(1), { tenant: "default", claimsDigest: digest }), ProtocolError);
  });

  test("requests: nonce, AAD, sealed bytes, SealedRequest, request digest", () => {
    assert.deepEqual((doc["requests"] as Doc[]).map((r) => r["seq"]), [1, 2, MAX_SESSION_SEQ]);
    for (const r of doc["requests"] as Doc[]) {
      const seq = r["seq"] as number;
      assert.equal(sessionNonce(keys.requestIv, seq).toString("hex"), r["nonce"]);
      const aad = sessionAad({
        method: doc["method"], tenant: doc["tenant"], requestId: h(doc["request_id"]),
        timestampMs: doc["timestamp_ms"], claimsDigest: digest, sessionId: keys.sessionId, seq,
      });
      assert.equal(aad.toString("hex"), r["aad"]);
      const call = sealSessionRequest(keys, seq, {
        method: doc["method"], tenant: doc["tenant"], payload: h(doc["payload"]),
        timestampMs: doc["timestamp_ms"], claimsDigest: digest, random: (n) => h(doc["request_id"]).subarray(0, n),
      });
      assert.equal((call.request["sealed"] as Buffer).toString("hex"), r["sealed"]);
      assert.equal(encode("SealedRequest", call.request).toString("hex"), r["sealed_request"]);
      assert.equal(sessionRequestDigest(keys.sessionId, seq, h(r["tag"])), r["request_digest"]);
      assert.equal(call.digest, r["request_digest"]);
      assert.equal(requestDigest(decode("SealedRequest", h(r["sealed_request"]))), r["request_digest"]);
      assert.deepEqual(call.responseKey, keys.responseKey);
    }
    for (const bad of [0, MAX_SESSION_SEQ + 1]) {
      assert.throws(() => sessionNonce(keys.requestIv, bad), ProtocolError);
    }
  });

  test("the response opens under the session's response key; its receipt names the session request", () => {
    const res = doc["response"];
    const first = (doc["requests"] as Doc[])[0] as Doc;
    const request = decode("SealedRequest", h(first["sealed_request"]));
    const call: SealedCall = { request, method: doc["method"], requestId: h(doc["request_id"]), responseKey: keys.responseKey };
    assert.equal(responseAad(doc["method"], h(doc["request_id"]), 0, true).toString("hex"), res.aad);
    const opened = openResponse(call, decode("SealedResponse", h(res.sealed_response)));
    assert.equal(opened.payload.toString("hex"), res.payload);
    assert.equal(opened.sessionIdleSeconds, 0);
    const key = Verifier.fromVkey(doc["audit_log_vkey"]);
    const receipt = verifyReceipt(opened.receipt, key, { tenant: doc["tenant"], requestDigest: requestDigest(request), responseDigest: res.response_digest });
    assert.equal(receipt.modelDigest, res.model_digest);
    // the one-shot name of the same bytes is not the session's
    assert.throws(() => verifyReceipt(opened.receipt, key, { requestDigest: createHash("sha256").update(h(first["sealed"])).digest("hex") }), /does not match/);
    assert.throws(() => openResponse({ ...call, responseKey: keys.requestKey }, decode("SealedResponse", h(res.sealed_response))), DecryptionError);
  });
});

test("suite 2: the X-Wing key derives the same public key and opens the Python sample", async () => {
  const doc = load("suite2.json");
  const kem = new XWing();
  const pair = await kem.generateKeyPairDerand(new Uint8Array(h(doc["xwing_seed"])));
  const pk = Buffer.from(await kem.serializePublicKey(pair.publicKey));
  assert.equal(pk.toString("hex"), doc["public_key"]);
  const suite = new CipherSuite({ kem, kdf: new HkdfSha256(), aead: new Aes256Gcm() });
  const sealed = h(doc["request"].sealed);
  const enc = sealed.subarray(0, 1120);
  const opened = await suite.open(
    { recipientKey: pair.privateKey, enc: new Uint8Array(enc).buffer, info: new Uint8Array(h(doc["request"].info)).buffer },
    new Uint8Array(sealed.subarray(1120)).buffer,
  );
  assert.equal(Buffer.from(opened).toString("hex"), doc["request"].request_body);
  // and what this client seals to that key opens under it
  const mine = await hpkeSeal(Suite.MLKEM768X25519_SHA256_AES256GCM, pk, h(doc["request"].info), Buffer.from("x-wing"));
  const back = await suite.open(
    { recipientKey: pair.privateKey, enc: new Uint8Array(mine.subarray(0, 1120)).buffer, info: new Uint8Array(h(doc["request"].info)).buffer },
    new Uint8Array(mine.subarray(1120)).buffer,
  );
  assert.equal(Buffer.from(back).toString(), "x-wing");
});

describe("SEV-SNP verdicts equal the Python verifier's", () => {
  const doc = load("snp_verdicts.json");
  const now = new Date(doc["now"]);
  test(`${doc["cases"].length} real reports and mutations`, () => {
    const mismatches: string[] = [];
    for (const c of doc["cases"] as Doc[]) {
      const raw = Buffer.from(readFileSync(join(VECTORS, "sev-snp", c["report"])));
      let report: Buffer = raw;
      const m = c["mutation"] ?? {};
      if (m.flip) report.writeUInt8(report.readUInt8(m.flip[0]) ^ m.flip[1], m.flip[0]);
      if (m.size !== undefined) report = Buffer.concat([raw, Buffer.alloc(Math.max(0, m.size - raw.length))]).subarray(0, m.size);
      const p = c["policy"] ?? {};
      const policy = new AttestationPolicy(
        amdRoots().filter((r) => !p.roots || p.roots.includes(r.product)),
        {
          allowDebug: p.allow_debug ?? false,
          measurements: p.measurements ?? [],
          minTcb: p.min_tcb ? { fmc: 0, ...p.min_tcb } : undefined,
          allowedVmpls: p.vmpls ?? [0, 1, 2, 3],
          requireKeyBinding: p.report_data !== undefined,
        },
      );
      let got: Doc;
      try {
        const chain = snpCertChainFrom(...(c["certs"] as string[]).map((f) => readFileSync(join(VECTORS, "sev-snp", f))));
        const v = verifySnpReport(report, chain, policy, {
          now: c["now"] ? new Date(c["now"]) : now,
          ...(p.report_data ? { expectedReportData: h(p.report_data) } : {}),
        });
        got = {
          ok: true, product: v.product, vmpl: v.vmpl, measurement: v.measurement.toString("hex"),
          reported_tcb: { bootloader: v.reportedTcb.bootloader, tee: v.reportedTcb.tee, snp: v.reportedTcb.snp, microcode: v.reportedTcb.microcode, fmc: v.reportedTcb.fmc },
          root_fingerprint: v.rootFingerprint,
        };
      } catch (exc) {
        if (!(exc instanceof AttestationError)) throw exc;
        got = { ok: false, reason: exc.reason };
      }
      try {
        assert.deepEqual(got, c["expect"]);
      } catch {
        mismatches.push(`${c["name"]}: node ${JSON.stringify(got)} python ${JSON.stringify(c["expect"])}`);
      }
    }
    assert.deepEqual(mismatches, []);
  });
});

test("the pinned AMD roots are the Python SDK's", () => {
  const dir = join(REPO, "sdk", "src", "veil", "sdk", "attestation", "roots");
  for (const product of ["Milan", "Genoa", "Turin"] as const) {
    assert.equal(AMD_ROOT_PEMS[product].ark, readFileSync(join(dir, `ark_${product.toLowerCase()}.pem`), "utf8"));
    assert.equal(AMD_ROOT_PEMS[product].ask, readFileSync(join(dir, `ask_${product.toLowerCase()}.pem`), "utf8"));
  }
});

describe("RFC 9162 proofs against transparency-dev/merkle vectors", () => {
  const base = join(VECTORS, "merkle", "transparency-dev-merkle", "testdata");
  const b64 = (s: string | null) => Buffer.from(s ?? "", "base64");
  const files = (kind: string) =>
    readdirSync(join(base, kind), { recursive: true, withFileTypes: true })
      .filter((e) => e.isFile() && e.name.endsWith(".json"))
      .map((e) => join(e.parentPath ?? (e as unknown as { path: string }).path, e.name));
  test("inclusion", () => {
    let checked = 0;
    for (const f of files("inclusion")) {
      const v = JSON.parse(readFileSync(f, "utf8")) as Doc;
      const run = () => verifyInclusion(b64(v["leafHash"]), BigInt(v["leafIdx"]), BigInt(v["treeSize"]), (v["proof"] ?? []).map(b64), b64(v["root"]));
      if (v["wantErr"]) assert.throws(run, Error, f);
      else assert.doesNotThrow(run, f);
      checked++;
    }
    assert.ok(checked > 50);
  });
  test("consistency", () => {
    let checked = 0;
    for (const f of files("consistency")) {
      const v = JSON.parse(readFileSync(f, "utf8")) as Doc;
      const run = () => verifyConsistency(BigInt(v["size1"]), BigInt(v["size2"]), b64(v["root1"]), b64(v["root2"]), (v["proof"] ?? []).map(b64));
      if (v["wantErr"]) assert.throws(run, Error, f);
      else assert.doesNotThrow(run, f);
      checked++;
    }
    assert.ok(checked > 50);
  });
});

test("a verified enclave refuses a suite it does not offer", () => {
  const doc = load("suite1.json");
  const claims = parseClaims(h(doc["attestation"].claims));
  const fake = new AttestedEnclave({} as never, claims, h(doc["attestation"].claims_digest), {} as never, new Date(0), Buffer.alloc(32));
  assert.throws(() => fake.publicKey(Suite.MLKEM768X25519_SHA256_AES256GCM), AttestationError);
});
