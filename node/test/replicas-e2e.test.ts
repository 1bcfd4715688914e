// End to end against a replicated deployment on loopback (test/serve_replicas.py: PostgreSQL, an
// attested coordinator and one replica, real processes, simulated TEE): the client attests the
// shared claims (coordinator key, manifest), verifies the replica certificate on every final
// response and each receipt, checkpoint, proof and export under the certified replica log key.
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  AttestationError,
  AttestationPolicy,
  AuditLogError,
  VeilClient,
  attestCoordinator,
  attestationCheck,
  tensor,
  verifyExport,
} from "../src/index.js";
import { Enclave } from "./enclave.js";

process.removeAllListeners("warning"); // the simulated root warns on every verification, by design

interface Deployment {
  skip?: string;
  address: string;
  root_pem: string;
  measurement: string;
  manifest_sha256: string;
  coordinator: string;
  coordinator_measurement: string;
  owner_public: string;
  api_keys: Record<string, string>;
  model: string;
}

let launched: Enclave;
let info: Deployment;
const work = mkdtempSync(join(tmpdir(), "veil-node-replicas-"));

describe("a Node client against a replicated deployment", () => {
  before(async () => {
    launched = await Enclave.start("serve_replicas.py");
    info = launched.info as unknown as Deployment;
  });
  after(async () => {
    await launched.stop();
    rmSync(work, { recursive: true, force: true });
  });

  test("receipts, checkpoint, proof and export verify under the certified replica key", async (t) => {
    if (info.skip) {
      t.skip(info.skip);
      return;
    }
    const policy = AttestationPolicy.simulatedForTests(info.root_pem, { measurements: [info.measurement] });
    const c = new VeilClient(info.address, { tenant: "default", apiKey: info.api_keys["default"] as string, policy });
    try {
      const attested = await c.attest();
      assert.equal(attested.claims.manifestSha256.toString("hex"), info.manifest_sha256);
      const coordinatorKey = attested.claims.auditLogKey;
      const model = await c.uploadModel(readFileSync(info.model), "replicated");
      await c.infer(model.ref, { x: tensor(new Float32Array([0.5, -1, 2, 0.25]), [1, 4]) });
      assert.equal(c.receipts.length, 2);
      assert.equal(c.answeredBy.length, 2);
      for (const [i, kept] of c.receipts.entries()) {
        const replica = c.answeredBy[i];
        assert.equal(replica?.replica, "r1");
        assert.equal(replica?.measurement, info.measurement);
        assert.equal(kept.receipt.log, `${replica?.logOrigin}/default`);
        assert.ok(!replica?.logKey.equals(coordinatorKey), "the replica signs with its own key");
      }
      const checkpoint = await c.auditCheckpoint();
      assert.equal(checkpoint.origin, "veil-replica-r1/default");
      const proved = await c.proveReceipt((c.receipts[1] as { receipt: Parameters<VeilClient["proveReceipt"]>[0] }).receipt);
      assert.ok(proved.size >= checkpoint.size);

      const dir = await c.exportAudit(join(work, "export"));
      const verified = await verifyExport(dir, { attestationCheck: attestationCheck(policy) });
      assert.equal(verified.checkpoint.origin, "veil-replica-r1/default");
      assert.ok(verified.entryCount >= 2);
      // without the certificate, the export's log key is unproven: refused
      rmSync(join(dir, "attestation", "replica.pb"));
      await assert.rejects(verifyExport(dir, { attestationCheck: attestationCheck(policy) }), (e: unknown) =>
        e instanceof AuditLogError && e.reason === "missing" && /replica's export has no attestation\/replica.pb/.test(e.message));
    } finally {
      c.close();
    }
  });

  test("the coordinator attests, its owner signed the manifest, and it vouches for the replica", async (t) => {
    if (info.skip) {
      t.skip(info.skip);
      return;
    }
    const root = readFileSync(info.root_pem);
    const owner = Buffer.from(info.owner_public, "hex");
    const policy = AttestationPolicy.simulatedForTests(root, { measurements: [info.coordinator_measurement] });
    const coordinator = await attestCoordinator(info.coordinator, { policy, owner });
    assert.equal(coordinator.manifest.sha256.toString("hex"), info.manifest_sha256);
    assert.ok(coordinator.manifest.policyToml.includes(info.measurement));
    const replicaPolicy = AttestationPolicy.simulatedForTests(root, { measurements: [info.measurement] });
    const c = new VeilClient(info.address, { tenant: "default", apiKey: info.api_keys["default"] as string, policy: replicaPolicy });
    try {
      assert.ok(coordinator.vouchesFor(await c.attest()));
    } finally {
      c.close();
    }
    const stranger = Buffer.alloc(32, 7);
    await assert.rejects(attestCoordinator(info.coordinator, { policy, owner: stranger }), (e: unknown) =>
      e instanceof AttestationError && e.reason === "policy" && /manifest signature/.test(e.message));
    const other = AttestationPolicy.simulatedForTests(root, { measurements: ["01".repeat(48)] });
    await assert.rejects(attestCoordinator(info.coordinator, { policy: other, owner }), (e: unknown) =>
      e instanceof AttestationError && e.reason === "measurement_mismatch");
  });
});
