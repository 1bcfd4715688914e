// Verify an enclave, upload an ONNX model and run one sealed inference.
//   node dist/examples/quickstart.js HOST:PORT API_KEY_FILE MODEL.onnx [TRUST_ROOT.pem]
// With TRUST_ROOT (e.g. `<data-dir>/simulated-root.pem` of a simulated `veil serve`) the
// enclave is checked against that test root (it warns); without it, against AMD's roots.
import { readFileSync } from "node:fs";
import { AttestationPolicy, VeilClient, readApiKey, tensor, values } from "../src/index.js";

const [address, keyFile, modelFile, trustRoot] = process.argv.slice(2);
if (!address || !keyFile || !modelFile) {
  console.error("usage: quickstart.js HOST:PORT API_KEY_FILE MODEL.onnx [TRUST_ROOT.pem]");
  process.exit(2);
}
const policy = trustRoot
  ? AttestationPolicy.simulatedForTests(trustRoot)
  : AttestationPolicy.production({ allowAnyMeasurement: true });
const client = new VeilClient(address, { tenant: "default", apiKey: readApiKey(keyFile), policy });
try {
  const enclave = await client.attest();
  console.log(`attested ${enclave.tee} enclave, measurement ${enclave.measurement.slice(0, 16)}…`);
  const model = await client.uploadModel(readFileSync(modelFile), "quickstart");
  const input = model.inputs[0];
  const width = Math.max(1, input?.shape[input.shape.length - 1] ?? 1);
  const out = await client.infer(model.ref, {
    [input?.name ?? "x"]: tensor(new Float32Array(width).fill(0.5), [1, width]),
  });
  for (const [name, t] of Object.entries(out)) {
    console.log(`${name} ${JSON.stringify(t.shape)}: ${Array.from(values(t) as Float32Array).map((v) => v.toFixed(4)).join(" ")}`);
  }
  console.log(`receipt: leaf ${client.receipts.at(-1)?.receipt.leafIndex} of ${client.receipts.at(-1)?.receipt.log}`);
} finally {
  client.close();
}
