// End to end against a real enclave on 127.0.0.1 (simulated TEE): attestation, upload, sealed
// inference with both suites, sealing sessions (1.4), receipts and proofs, training, export and its
// offline verification.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  AttestationError,
  AttestationFailure,
  AttestationPolicy,
  AuditLogError,
  Method,
  RemoteError,
  RemoteReason,
  Suite,
  VeilClient,
  attestationCheck,
  tensor,
  values,
  verifyExport,
} from "../src/index.js";
import { Enclave } from "./enclave.js";

process.removeAllListeners("warning"); // the simulated root warns on every verification, by design

let enclave: Enclave;
let policy: AttestationPolicy;
const clients: VeilClient[] = [];
const work = mkdtempSync(join(tmpdir(), "veil-node-"));

function client(suite: Suite = Suite.X25519_SHA256_AES256GCM, tenant = "default"): VeilClient {
  const c = new VeilClient(enclave.info.address, { tenant, apiKey: enclave.info.api_keys[tenant] as string, policy, suite });
  clients.push(c);
  return c;
}

const batch = () => tensor(new Float32Array([0.5, -1, 2, 0.25, 1, 1, -0.5, 0]), [2, 4]);

/** A sealed request as the enclave's gateway saw its clear envelope (`sealed` command). */
interface Sealed {
  method: string;
  session: string;
  seq: number;
}
const envelopes = async (e: Enclave, from = 0): Promise<[string, string, number][]> =>
  ((await e.command("sealed")) as Sealed[]).slice(from).map((s) => [s.method, s.session, s.seq]);
const probs = async (c: VeilClient, model: string): Promise<Float32Array> =>
  values((await c.infer(model, { x: batch() }))["probs"] as never) as Float32Array;

describe("a Node client against a real enclave", () => {
  before(async () => {
    enclave = await Enclave.start();
    policy = AttestationPolicy.simulatedForTests(enclave.info.root_pem, { measurements: [enclave.info.measurement] });
  });
  after(async () => {
    for (const c of clients) c.close();
    await enclave.stop();
    rmSync(work, { recursive: true, force: true });
  });

  test("attestation verifies and binds the measurement, keys and log key", async () => {
    const c = client();
    const attested = await c.attest();
    assert.equal(attested.measurement, enclave.info.measurement);
    assert.equal(attested.tee, "sev-snp");
    assert.ok(attested.insecureRoot);
    assert.equal(attested.publicKey(Suite.X25519_SHA256_AES256GCM).length, 32);
    assert.equal(attested.publicKey(Suite.MLKEM768X25519_SHA256_AES256GCM).length, 1216);
    assert.ok(attested.logVerifier);
  });

  test("fail closed: an enclave that does not satisfy the policy gets nothing but GetAttestation", async () => {
    const before = (await enclave.command("calls")) as string[];
    const strict = new VeilClient(enclave.info.address, {
      tenant: "default",
      apiKey: enclave.info.api_keys["default"] as string,
      policy: AttestationPolicy.simulatedForTests(enclave.info.root_pem, { measurements: ["00".repeat(48)] }),
    });
    clients.push(strict);
    await assert.rejects(strict.listModels(), (e: unknown) => e instanceof AttestationError && e.reason === AttestationFailure.MEASUREMENT_MISMATCH);
    await assert.rejects(strict.infer("m", { x: batch() }), AttestationError);
    await assert.rejects(strict.uploadModel(Buffer.from("not sent"), "m"), AttestationError);
    const production = new VeilClient(enclave.info.address, {
      tenant: "default",
      apiKey: enclave.info.api_keys["default"] as string,
      policy: AttestationPolicy.production({ allowAnyMeasurement: true }),
    });
    clients.push(production);
    await assert.rejects(production.listModels(), (e: unknown) => e instanceof AttestationError && e.reason === AttestationFailure.UNTRUSTED_ROOT);
    const calls = ((await enclave.command("calls")) as string[]).slice(before.length);
    assert.ok(calls.length >= 4);
    assert.deepEqual([...new Set(calls)], ["/veil.v1.AttestationService/GetAttestation"]);
  });

  for (const suite of [Suite.X25519_SHA256_AES256GCM, Suite.MLKEM768X25519_SHA256_AES256GCM]) {
    test(`suite ${suite}: upload, list, sealed inference, receipts verified on arrival, delete`, async () => {
      const c = client(suite);
      const name = `mlp-s${suite}`;
      const model = readFileSync(enclave.info.model);
      const info = await c.uploadModel(model, name);
      assert.equal(info.ref, `${name}@1`);
      assert.equal(info.inputs[0]?.name, "x");
      const listed = await c.listModels();
      assert.ok(listed.some((m) => m.ref === info.ref));
      const out = await c.infer(name, { x: batch() }, { outputNames: ["probs"] });
      assert.deepEqual(Object.keys(out), ["probs"]);
      const probs = values(out["probs"] as never) as Float32Array;
      assert.deepEqual(out["probs"]?.shape, [2, 3]);
      for (const row of [0, 1]) {
        const sum = (probs[row * 3] as number) + (probs[row * 3 + 1] as number) + (probs[row * 3 + 2] as number);
        assert.ok(Math.abs(sum - 1) < 1e-5, `softmax row ${row} sums to ${sum}`);
      }
      const receipt = c.receipts[c.receipts.length - 1];
      assert.ok(receipt);
      assert.equal(receipt.receipt.tenant, "default");
      assert.equal(receipt.receipt.modelDigest, info.sha256);
      assert.ok(receipt.note.startsWith("veil-audit-receipt/v2\n"), "the client asks for batched (v2) receipts and verifies them");
      const deleted = await c.deleteModel(name);
      assert.deepEqual(deleted.map((m) => m.ref), [info.ref]);
      await assert.rejects(c.infer(name, { x: batch() }), (e: unknown) =>
        e instanceof RemoteError && e.code === "NOT_FOUND" && e.reason === RemoteReason.NOT_FOUND && e.detail.includes(name));
    });
  }

  test("sealed errors: the detail opens, the reason is typed", async () => {
    const c = client();
    await c.uploadModel(readFileSync(enclave.info.model), "shape-check");
    await assert.rejects(c.infer("shape-check", { y: batch() }), (e: unknown) =>
      e instanceof RemoteError && e.reason === RemoteReason.INVALID_INPUT && e.code === "INVALID_ARGUMENT" && /'x'/.test(e.detail));
    await assert.rejects(c.uploadModel(Buffer.from("not an onnx model"), "bad"), (e: unknown) =>
      e instanceof RemoteError && e.reason === RemoteReason.INVALID_INPUT);
    const wrongKey = new VeilClient(enclave.info.address, { tenant: "default", apiKey: "wrong-key", policy });
    clients.push(wrongKey);
    await assert.rejects(wrongKey.listModels(), (e: unknown) =>
      e instanceof RemoteError && e.code === "UNAUTHENTICATED" && e.reason === RemoteReason.UNAUTHENTICATED);
  });

  test("AbortSignal deadlines cancel a call", async () => {
    const c = client();
    await c.attest();
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(c.listModels({ signal: controller.signal }), (e: unknown) => e instanceof RemoteError && e.code === "CANCELLED");
    await assert.rejects(c.listModels({ timeoutMs: 0 }), (e: unknown) => e instanceof RemoteError && e.code === "DEADLINE_EXCEEDED");
    assert.ok(Array.isArray(await c.listModels({ signal: AbortSignal.timeout(10_000) })));
  });

  test("a rotated key epoch: re-attest once and retry", async () => {
    const c = client();
    const first = await c.attest();
    assert.equal(await enclave.command("rotate"), "rotated");
    // the old epoch still opens until it expires; the client keeps its verdict and still works
    await c.listModels();
    const old = c.session;
    assert.ok(old, "the one-shot call opened a session under the old attestation");
    const again = await c.attest({ force: true });
    assert.notEqual(again.keyId, first.keyId);
    // that session was bound to the old claims: the next call is one-shot again, and opens another
    const mark = ((await enclave.command("sealed")) as Sealed[]).length;
    await c.listModels();
    assert.deepEqual(await envelopes(enclave, mark), [[Method.LIST_MODELS, "", 0]]);
    assert.notEqual(c.session?.sessionId, old.sessionId);
    assert.equal(c.session?.requests, 0);
  });

  test("sessions (1.4): one HPKE step, then every call sealed in the session; same answers as one-shot", async () => {
    const c = client();
    const held = (await enclave.command("sessions")) as number;
    const mark = ((await enclave.command("sealed")) as Sealed[]).length;
    await c.uploadModel(readFileSync(enclave.info.model), "mlp-session"); // one-shot: asks for a session
    const opened = c.session;
    assert.ok(opened);
    assert.deepEqual([opened.requests, opened.idleSeconds, opened.sessionId.length], [0, 600, 32]);
    assert.equal(await enclave.command("sessions"), held + 1);
    const inSession = [await probs(c, "mlp-session"), await probs(c, "mlp-session"), await probs(c, "mlp-session")];
    assert.ok((await c.listModels()).some((m) => m.ref === "mlp-session@1"));
    assert.equal(c.session?.sessionId, opened.sessionId);
    assert.equal(c.session?.requests, 4);
    // on the wire: the upload sealed with HPKE, then requests 1..4 of that session, no HPKE step
    assert.deepEqual(await envelopes(enclave, mark), [
      [Method.UPLOAD_MODEL, "", 0],
      [Method.INFER, opened.sessionId, 1],
      [Method.INFER, opened.sessionId, 2],
      [Method.INFER, opened.sessionId, 3],
      [Method.LIST_MODELS, opened.sessionId, 4],
    ]);
    // each answer's receipt was verified against the session request digest
    assert.equal(c.receipts.length, 5);
    assert.equal(new Set(c.receipts.map((r) => r.receipt.requestDigest)).size, 5);
    // `sessions: false`: every call one-shot, and the enclave opens no session for it
    const plain = new VeilClient(enclave.info.address, { tenant: "default", apiKey: enclave.info.api_keys["default"] as string, policy, sessions: false });
    clients.push(plain);
    const before = ((await enclave.command("sealed")) as Sealed[]).length;
    const oneShot = [await probs(plain, "mlp-session"), await probs(plain, "mlp-session")];
    assert.equal(plain.session, undefined);
    assert.equal(await enclave.command("sessions"), held + 1);
    assert.deepEqual(await envelopes(enclave, before), [[Method.INFER, "", 0], [Method.INFER, "", 0]]);
    for (const answer of [...inSession, oneShot[1]]) assert.deepEqual(answer, oneShot[0]);
  });

  test("receipts are proven in the signed log; checkpoints only grow", async () => {
    const c = client();
    await c.listModels();
    const kept = c.receipts[c.receipts.length - 1];
    assert.ok(kept);
    const checkpoint = await c.proveReceipt(kept.receipt);
    assert.equal(checkpoint.origin, `${(await c.attest()).claims.auditLogOrigin}/default`);
    assert.ok(checkpoint.size > BigInt(kept.receipt.leafIndex));
    await c.listModels();
    const newer = await c.auditConsistency(checkpoint);
    assert.ok(newer.size > checkpoint.size);
    const head = await c.auditCheckpoint();
    assert.ok(head.size >= newer.size);
  });

  test("DP training streams progress, registers a servable model, certifies the record", async () => {
    const c = client();
    const dataset = await c.uploadDataset(readFileSync(enclave.info.dataset), { format: "csv", labelColumn: "label" });
    assert.equal(dataset.rows, 320);
    assert.equal(dataset.numClasses, 10);
    const progress: number[] = [];
    let outcome;
    for await (const event of c.train(dataset, { model: "logreg", targetEpsilon: 2, epochs: 1, batchSize: 64, name: "digits-node", seed: 1 })) {
      if (event.type === "progress") {
        progress.push(event.progress.step);
        assert.ok(event.progress.epsilon > 0 && event.progress.epsilon <= 2 + 1e-9);
      } else {
        outcome = event.outcome;
      }
    }
    assert.ok(progress.length > 0);
    assert.deepEqual(progress, [...progress].sort((a, b) => a - b));
    assert.ok(outcome);
    assert.equal(outcome.record["model_sha256"], outcome.model.sha256);
    assert.equal(outcome.record["code_measurement"], enclave.info.measurement);
    assert.ok(Number(outcome.record["epsilon"]) <= 2 + 1e-9);
    const budget = await c.budget(dataset);
    assert.ok(budget.epsilonSpent > 0);
    const registered = (await c.listModels()).find((m) => m.ref === outcome.model.ref);
    assert.equal(registered?.sha256, outcome.model.sha256);
  });

  test("audit export: streamed, verified offline with the same verdicts as `veil audit verify`", async () => {
    const c = client();
    for (let i = 0; i < 4; i++) await c.listModels();
    const dir = await c.exportAudit(join(work, "export"));
    const verified = await verifyExport(dir, { attestationCheck: attestationCheck(policy) });
    assert.equal(verified.tenant, "default");
    assert.equal(BigInt(verified.entryCount), verified.checkpoint.size);
    // `veil audit verify DIR --json`, run for every directory in one Python process
    const pyVerify = (dirs: string[]): { rc: number; out: Record<string, unknown> }[] => {
      const script = [
        "import contextlib, io, json, sys",
        "from veil.sdk.cli import main",
        "results = []",
        "for d in sys.argv[2:]:",
        "    out, err = io.StringIO(), io.StringIO()",
        "    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):",
        "        rc = main(['audit', 'verify', d, '--trust-root', sys.argv[1], '--json'])",
        "    results.append({'rc': rc, 'out': json.loads(out.getvalue())})",
        "print(json.dumps(results))",
      ].join("\n");
      const text = execFileSync(enclave.info.python, ["-W", "ignore", "-c", script, enclave.info.root_pem, ...dirs], { encoding: "utf8" });
      return JSON.parse(text) as { rc: number; out: Record<string, unknown> }[];
    };
    const errorText = (out: Record<string, unknown>): string => {
      const error = out["error"];
      return typeof error === "string" ? error : String((error as Record<string, unknown>)["message"]);
    };
    const lines = readFileSync(join(dir, "entries.jsonl"), "utf8").split("\n");
    const edits: [string, (ls: string[]) => string[]][] = [
      ["edited", (ls) => ls.map((l, i) => (i === 0 ? l.replace('"v":1', '"v":2') : l))],
      ["deleted", (ls) => ls.filter((_, i) => i !== 1)],
      ["reordered", (ls) => [ls[1] as string, ls[0] as string, ...ls.slice(2)]],
      ["truncated", (ls) => ls.slice(0, -3)],
    ];
    const copies: string[] = [];
    for (const [what, edit] of edits) {
      const copy = join(work, `tampered-${what}`);
      cpSync(dir, copy, { recursive: true });
      const edited = edit(lines).join("\n");
      assert.notEqual(edited, lines.join("\n"), what);
      writeFileSync(join(copy, "entries.jsonl"), edited);
      copies.push(copy);
    }
    const swapped = join(work, "tampered-key");
    cpSync(dir, swapped, { recursive: true });
    writeFileSync(join(swapped, "log.pub"), "other+00000000+AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n");
    copies.push(swapped);
    const [ours, ...theirs] = pyVerify([dir, ...copies]);
    assert.equal(ours?.rc, 0);
    for (const [key, value] of Object.entries({ tenant: verified.tenant, tree_size: Number(verified.checkpoint.size), entries: verified.entryCount, vkey: verified.vkey, full: verified.full })) {
      if (key in (ours?.out ?? {})) assert.deepEqual(ours?.out[key], value, key);
    }
    // tampered copies: both refuse, with the same first failure
    for (const [i, copy] of copies.entries()) {
      const python = theirs[i];
      assert.equal(python?.rc, 1, copy);
      const expected = errorText(python?.out ?? {});
      await assert.rejects(verifyExport(copy, { attestationCheck: attestationCheck(policy) }), (e: unknown) => {
        assert.ok(e instanceof AuditLogError);
        assert.equal(e.message, expected);
        return true;
      });
    }
  });
});

describe("a session the enclave forgot (`[limits] max_sessions = 1`, two clients)", () => {
  let small: Enclave;
  const mine: VeilClient[] = [];
  before(async () => {
    small = await Enclave.start("serve_enclave.py", ["--max-sessions", "1"]);
  });
  after(async () => {
    for (const c of mine) c.close();
    await small.stop();
  });

  test("is recovered transparently: refused before anything ran, then one-shot with a new session", async () => {
    const trust = AttestationPolicy.simulatedForTests(small.info.root_pem, { measurements: [small.info.measurement] });
    const make = (): VeilClient => {
      const c = new VeilClient(small.info.address, { tenant: "default", apiKey: small.info.api_keys["default"] as string, policy: trust });
      mine.push(c);
      return c;
    };
    const first = make();
    const second = make();
    await first.uploadModel(readFileSync(small.info.model), "mlp");
    const dataset = await first.uploadDataset(readFileSync(small.info.dataset), { format: "csv", labelColumn: "label" });
    const old = first.session;
    assert.equal(old?.requests, 1, "the dataset went in the session the upload opened");
    const theirs = await probs(second, "mlp"); // opens second's session: the enclave drops first's
    assert.equal(await small.command("sessions"), 1);
    const mark = ((await small.command("sealed")) as Sealed[]).length;
    assert.deepEqual(await probs(first, "mlp"), theirs);
    assert.deepEqual(await envelopes(small, mark), [[Method.INFER, old.sessionId, 2], [Method.INFER, "", 0]]);
    const renewed = first.session;
    assert.ok(renewed && renewed.sessionId !== old.sessionId);
    assert.equal(renewed.requests, 0);
    assert.equal(first.receipts.length, 3, "upload, dataset, inference: the refused attempt has no receipt");
    await probs(first, "mlp");
    assert.equal(first.session?.requests, 1);

    // a training stream refused the same way before its first message is retried too
    await probs(second, "mlp"); // takes the enclave's one session back
    const held = first.session;
    assert.ok(held);
    const before = ((await small.command("sealed")) as Sealed[]).length;
    let outcome;
    for await (const event of first.train(dataset, { model: "logreg", targetEpsilon: 2, epochs: 1, batchSize: 64, name: "digits-forgotten", seed: 1 })) {
      if (event.type === "result") outcome = event.outcome;
    }
    assert.equal(outcome?.model.ref, "digits-forgotten@1");
    assert.deepEqual(await envelopes(small, before), [[Method.TRAIN, held.sessionId, 2], [Method.TRAIN, "", 0]]);
    assert.notEqual(first.session?.sessionId, held.sessionId);
  });
});
