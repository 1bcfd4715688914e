// Replays tests/vectors/protocol/receipts_v2.json (protocol 1.2) and replicas.json (1.3): the
// Node client must reach the Python SDK's verdict, with the same error type, reason and message.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import {
  AttestationError,
  AttestationPolicy,
  AuditLogError,
  Verifier,
  VeilError,
  deterministicEvidence,
  parseClaims,
  verifyManifest,
  replicaLogVerifier,
  verifyReceipt,
  verifyReplicaCertificate,
} from "../src/index.js";
import { decode } from "../src/proto.js";
import { PROTOCOL } from "./paths.js";

const h = (s: string) => Buffer.from(s, "hex");
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Doc = Record<string, any>;
const load = (name: string): Doc => JSON.parse(readFileSync(join(PROTOCOL, name), "utf8")) as Doc;

/** Python's verdict shape for an error; malformed certificates keep only the common prefix. */
function verdictOf(exc: unknown): Doc {
  if (!(exc instanceof VeilError)) throw exc;
  const reason = (exc as { reason?: string }).reason ?? "";
  return { ok: false, error: exc.constructor.name, reason, message: exc.message };
}

function sameVerdict(got: Doc, want: Doc): string | undefined {
  if (want["ok"]) {
    return JSON.stringify(got) === JSON.stringify(want) ? undefined : "verdict";
  }
  if (got["ok"] || got["error"] !== want["error"] || got["reason"] !== want["reason"]) {
    return "error type or reason";
  }
  // The detail after "malformed: " quotes the language's own parser (base64, hex); the
  // attestation messages are compared by reason, like the SNP verdicts.
  const message = String(want["message"]);
  const prefix = "replica certificate is malformed: ";
  if (message.startsWith(prefix) && !/JSON|unknown keys/.test(message)) {
    return String(got["message"]).startsWith(prefix) ? undefined : "message";
  }
  if (want["error"] === "AttestationError") {
    return undefined;
  }
  return got["message"] === message ? undefined : "message";
}

describe("receipts v2 (protocol 1.2)", () => {
  const doc = load("receipts_v2.json");

  test("every receipt of the batch verifies under the log key", () => {
    const key = Verifier.fromPublicKey(doc["log_name"], h(doc["log_public"]));
    const indexes = (doc["batch"] as string[]).map((text) => verifyReceipt(text, key).leafIndex);
    assert.deepEqual(indexes, [100, 101, 102, 103, 104]);
  });

  test("each tampered receipt gets Python's verdict", () => {
    const mismatches: string[] = [];
    for (const c of doc["cases"] as Doc[]) {
      const key = Verifier.fromPublicKey(doc["log_name"], h(c["log_public"]));
      const e = c["expected"] as Doc;
      let got: Doc;
      try {
        const r = verifyReceipt(c["receipt"], key, {
          tenant: e["tenant"],
          requestDigest: e["request_digest"],
          responseDigest: e["response_digest"],
        });
        got = { ok: true, leaf_index: r.leafIndex, request_digest: r.requestDigest };
      } catch (exc) {
        got = verdictOf(exc);
      }
      const why = sameVerdict(got, c["expect"]);
      if (why) mismatches.push(`${c["name"]} (${why}): node ${JSON.stringify(got)} python ${JSON.stringify(c["expect"])}`);
    }
    assert.deepEqual(mismatches, []);
  });
});

describe("replicated deployments (protocol 1.3)", () => {
  const doc = load("replicas.json");
  const now = new Date(doc["now_ms"]);
  const policy = (measurements: string[]) => AttestationPolicy.simulatedForTests(doc["trust_root_pem"], { measurements });

  test("the shared claims name the coordinator key and the manifest", () => {
    const claims = parseClaims(h(doc["deployment_claims"]));
    assert.equal(claims.auditLogKey.toString("hex"), doc["coordinator_public"]);
    assert.equal(claims.manifestSha256.toString("hex"), doc["manifest_sha256"]);
    const single = parseClaims(h(load("suite1.json")["attestation"].claims));
    assert.equal(single.manifestSha256.length, 0);
  });

  test("each manifest gets Python's verdict", () => {
    const mismatches: string[] = [];
    for (const c of doc["manifest_cases"] as Doc[]) {
      let got: Doc;
      try {
        const m = verifyManifest(Buffer.from(c["manifest"], "utf8"), h(c["signature"]), h(c["owner_public"]));
        got = { ok: true, deployment: m.deployment, epoch_seconds: m.epochSeconds, sha256: m.sha256.toString("hex") };
      } catch (exc) {
        got = verdictOf(exc);
      }
      if (c["expect"]["ok"] || c["expect"]["error"] !== "AttestationError") {
        if (JSON.stringify(got) !== JSON.stringify(c["expect"])) mismatches.push(`${c["name"]}: node ${JSON.stringify(got)} python ${JSON.stringify(c["expect"])}`);
      } else if (sameVerdict(got, c["expect"])) {
        mismatches.push(`${c["name"]}: node ${JSON.stringify(got)}`);
      }
    }
    assert.deepEqual(mismatches, []);
    assert.equal(((doc["manifest_cases"] as Doc[])[0] as Doc)["expect"]["sha256"], doc["manifest_sha256"]);
  });

  test("evidence is named by its deterministic serialization", () => {
    const evidence = decode("AttestationEvidence", h(doc["replica_evidence"]));
    assert.equal(deterministicEvidence(evidence).toString("hex"), doc["replica_evidence"]);
    const sample = decode("AttestationEvidence", h(doc["deterministic_sample"]));
    assert.equal(Object.keys(sample["collateral"] as object).length, 5);
    assert.equal(deterministicEvidence(sample).toString("hex"), doc["deterministic_sample"]);
  });

  test("each certificate gets Python's verdict", () => {
    const mismatches: string[] = [];
    for (const c of doc["cases"] as Doc[]) {
      let got: Doc;
      try {
        const identity = verifyReplicaCertificate(h(c["certificate"]), {
          coordinatorKey: h(c["coordinator_key"]),
          manifestSha256: h(c["manifest_sha256"]),
          policy: policy(c["measurements"]),
          now,
        });
        got = {
          ok: true,
          replica: identity.replica,
          tee: identity.tee,
          measurement: identity.measurement,
          log_origin: identity.logOrigin,
          log_key: identity.logKey.toString("hex"),
          log_vkey: replicaLogVerifier(identity).vkey,
          issued_at_ms: identity.issuedAt.getTime(),
        };
      } catch (exc) {
        got = verdictOf(exc);
      }
      const why = sameVerdict(got, c["expect"]);
      if (why) mismatches.push(`${c["name"]} (${why}): node ${JSON.stringify(got)} python ${JSON.stringify(c["expect"])}`);
    }
    assert.deepEqual(mismatches, []);
    assert.ok((doc["cases"] as Doc[]).filter((c) => !c["expect"].ok).length >= 15);
  });

  test("the receipt verifies under the certified replica key, not the coordinator's", () => {
    const identity = verifyReplicaCertificate(h(doc["certificate"]), {
      coordinatorKey: h(doc["coordinator_public"]),
      manifestSha256: h(doc["manifest_sha256"]),
      policy: policy([]),
      now,
    });
    const r = doc["receipt"];
    const receipt = verifyReceipt(r.text, replicaLogVerifier(identity), {
      tenant: r.tenant,
      requestDigest: r.request_digest,
      responseDigest: r.response_digest,
    });
    assert.deepEqual({ ok: true, leaf_index: receipt.leafIndex, request_digest: receipt.requestDigest }, r.under_replica_key);
    const claims = parseClaims(h(doc["deployment_claims"]));
    const coordinator = Verifier.fromPublicKey(claims.auditLogOrigin, claims.auditLogKey);
    let got: Doc = { ok: true };
    try {
      verifyReceipt(r.text, coordinator);
    } catch (exc) {
      got = verdictOf(exc);
    }
    assert.equal(sameVerdict(got, r.under_coordinator_key), undefined, JSON.stringify(got));
    assert.ok(got["error"] === AuditLogError.name);
  });

  test("without a policy only the coordinator's signature and the digests are checked", () => {
    const c = (doc["cases"] as Doc[]).find((x) => x["name"] === "policy pins another measurement") as Doc;
    const identity = verifyReplicaCertificate(h(c["certificate"]), {
      coordinatorKey: h(c["coordinator_key"]),
      manifestSha256: h(c["manifest_sha256"]),
    });
    assert.equal(identity.replica, "r1");
    assert.throws(
      () => verifyReplicaCertificate(h(c["certificate"]), { coordinatorKey: h(c["coordinator_key"]), manifestSha256: h(c["manifest_sha256"]), policy: policy([c["measurements"][0]]), now }),
      AttestationError,
    );
  });
});
