// Used by tests/test_node_client.py (Python <-> Node): infer on a model Python uploaded, upload one
// for Python to infer on, and print what happened as one JSON line.
//   node dist/test/cross.js ADDRESS ROOT_PEM API_KEY SUITE PY_MODEL NODE_MODEL_FILE NODE_MODEL_NAME
import { readFileSync } from "node:fs";
import { AttestationPolicy, Suite, VeilClient, tensor, values } from "../src/index.js";

process.removeAllListeners("warning");
const [address, rootPem, apiKey, suite, pyModel, file, name] = process.argv.slice(2) as [string, string, string, string, string, string, string];
const client = new VeilClient(address, {
  tenant: "default",
  apiKey,
  policy: AttestationPolicy.simulatedForTests(rootPem),
  suite: Number(suite) === 2 ? Suite.MLKEM768X25519_SHA256_AES256GCM : Suite.X25519_SHA256_AES256GCM,
});
try {
  const out = await client.infer(pyModel, { x: tensor(new Float32Array([0.5, -1, 2, 0.25]), [1, 4]) });
  const uploaded = await client.uploadModel(readFileSync(file), name);
  const receipts = client.receipts.map((r) => ({ request_digest: r.receipt.requestDigest, leaf_index: r.receipt.leafIndex }));
  console.log(JSON.stringify({
    outputs: Object.fromEntries(Object.entries(out).map(([k, t]) => [k, { shape: t.shape, values: Array.from(values(t) as Float32Array) }])),
    uploaded: uploaded.ref,
    sha256: uploaded.sha256,
    receipts,
  }));
} finally {
  client.close();
}
