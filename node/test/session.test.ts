// The client's side of a session (protocol 1.4): numbering, and when it stops using one.
import assert from "node:assert/strict";
import { test } from "node:test";
import { MAX_SESSION_SEQ, sessionKeys } from "../src/index.js";
import { ClientSession, IDLE_MARGIN } from "../src/session.js";

const digest = Buffer.alloc(32, 0x11);
const keys = sessionKeys(Buffer.alloc(32, 7), { tenant: "default", claimsDigest: digest });
const T0 = 1_768_478_400_000;

test("numbers start at 1 and each is handed out once", () => {
  const session = new ClientSession(keys, digest, 600, T0);
  assert.deepEqual([1, 2, 3].map((i) => session.take(digest, T0 + i)), [1, 2, 3]);
  assert.equal(session.used, 3);
});

test("a session idle for more than 0.8 x its idle time is not used; use keeps it fresh", () => {
  const session = new ClientSession(keys, digest, 600, T0);
  const limit = 600 * IDLE_MARGIN * 1000;
  assert.equal(session.take(digest, T0 + limit), 1); // exactly at the margin: still used
  assert.equal(session.take(digest, T0 + 2 * limit), 2); // measured from the last use
  assert.equal(session.take(digest, T0 + 3 * limit + 1), undefined);
  assert.equal(session.used, 2);
});

test("another attestation, or the last number used: no more requests in it", () => {
  const session = new ClientSession(keys, digest, 600, T0);
  assert.equal(session.take(Buffer.alloc(32, 0x22), T0), undefined);
  const full = new ClientSession(keys, digest, 600, T0, MAX_SESSION_SEQ - 1);
  assert.equal(full.take(digest, T0), MAX_SESSION_SEQ);
  assert.equal(full.take(digest, T0), undefined);
});
