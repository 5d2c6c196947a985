import assert from "node:assert/strict";
import { mkdtemp, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { FixQueue, MemoryStorage, VicinoAuthError, VicinoHttpError } from "../../src/index.js";
import { FileStorage } from "../../src/node.js";
import { FixServer, fixesAt, problem } from "../support/fakes.js";

const T0 = 1_790_000_000;

test("batches of at most maxBatch, in order, each fix once", async () => {
  const server = new FixServer();
  const q = new FixQueue(server, { maxBatch: 500 });
  assert.equal(await q.add(fixesAt(T0, 1234)), 1234);
  const r = await q.flush();
  assert.deepEqual(server.batches.map((b) => b.length), [500, 500, 234]);
  assert.deepEqual(r, { batches: 3, accepted: 1234, ignored: 0, pending: 0 });
  assert.deepEqual(server.processed.map((f) => f.ts), fixesAt(T0, 1234).map((f) => f.ts));
});

test("exact duplicates are dropped, queued or recently sent; a fix differing in anything is kept", async () => {
  const server = new FixServer();
  const q = new FixQueue(server);
  const [a, b] = fixesAt(T0, 2);
  assert.equal(await q.add([a, a, b]), 2);
  assert.equal(await q.add(a), 0);
  await q.flush();
  assert.equal(await q.add(b), 0, "sent a moment ago");
  assert.equal(await q.add({ ...b, accuracy_m: 11 }), 1);
  assert.equal(await q.add({ ...b, ts: new Date((T0 + 1) * 1000) }), 0, "the same instant as a Date");
});

test("a bad fix is refused at add, with nothing of the call queued", async () => {
  const q = new FixQueue(new FixServer());
  await assert.rejects(q.add([...fixesAt(T0, 2), { lat: 91, lon: 9, accuracy_m: 5, ts: T0 }]), /lat/);
  await assert.rejects(q.add({ lat: 45, lon: 9, accuracy_m: 5, ts: T0 * 1000 }), /milliseconds/);
  await assert.rejects(q.add({ lat: 45, lon: 9, accuracy_m: 0, ts: T0 }), /accuracy_m/);
  await assert.rejects(q.add({ lat: 45, lon: 9, accuracy_m: 5, ts: "2026-11-26T10:00:00" }), /offset/);
  assert.equal(await q.pending(), 0);
});

test("a killed app loses nothing: a new queue on the same storage sends what was added", async () => {
  const dir = await mkdtemp(join(tmpdir(), "vicino-queue-"));
  const offline = new FixServer();
  offline.failures = Array(100).fill("before");
  const first = new FixQueue(offline, { storage: new FileStorage(dir) });
  for (let i = 0; i < 7; i++) await first.add(fixesAt(T0 + i * 100, 90)); // added in pieces, as an app does
  await assert.rejects(first.flush()); // offline
  // the app is killed here: `first` is never used again
  const server = new FixServer();
  const second = new FixQueue(server, { storage: new FileStorage(dir) });
  assert.equal(await second.pending(), 630);
  const r = await second.flush();
  assert.equal(r.accepted, 630);
  assert.equal(server.processed.length, 630);
  assert.deepEqual(await readdir(dir), [encodeURIComponent("vicino.fixes.index")], "only an empty index is left");
  assert.equal(await new FixQueue(server, { storage: new FileStorage(dir) }).pending(), 0);
});

test("a batch leaves storage only once accepted; an ambiguous failure's resend is harmless", async () => {
  const storage = new MemoryStorage();
  const server = new FixServer();
  server.failures = ["after"]; // the server processes the first batch, the answer is lost
  const q = new FixQueue(server, { storage, maxBatch: 100 });
  await q.add(fixesAt(T0, 250));
  await assert.rejects(q.flush(), /connection reset/);
  assert.equal(await q.pending(), 250, "nothing removed without an answer");
  assert.equal(await new FixQueue(server, { storage, maxBatch: 100 }).pending(), 250, "and storage agrees");
  const r = await q.flush();
  assert.deepEqual(server.batches.map((b) => b.length), [100, 100, 100, 50]);
  assert.deepEqual(server.batches[0], server.batches[1], "the same batch again");
  assert.equal(r.ignored, 100, "the server ignores what it had processed (duplicate, out_of_order)");
  assert.equal(server.processed.length, 250, "each fix processed once");
  assert.equal(await q.pending(), 0);
});

test("fixes added while a batch is in flight go after it, none lost or doubled", async () => {
  const server = new FixServer();
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  const slow = { send: async (f: Parameters<FixServer["send"]>[0]) => { await gate; return server.send(f); } };
  const q = new FixQueue(slow, { maxBatch: 500 });
  await q.add(fixesAt(T0, 30));
  const flushing = q.flush();
  await new Promise((r) => setTimeout(r, 10));
  await q.add(fixesAt(T0 + 30, 30)); // the open segment is in flight: these go to a new one
  release();
  const r = await flushing;
  assert.equal(r.accepted, 60);
  assert.deepEqual(server.batches.map((b) => b.length), [30, 30]);
});

test("a fix the server refuses (422 naming it) is dropped and reported; the rest is sent", async () => {
  const server = new FixServer();
  let refused = true;
  const sender = {
    send: async (fixes: Parameters<FixServer["send"]>[0]) => {
      if (refused) {
        refused = false;
        throw new VicinoHttpError("POST /v1/locations", 422, problem(422, "fixes[1].ts: 90000 s old",
          [{ field: "fixes[1].ts", message: "90000 s old (at most 86400)" }]));
      }
      return server.send(fixes);
    },
  };
  const dropped: number[] = [];
  const q = new FixQueue(sender, { onDropped: (f) => dropped.push(...f.map((x) => x.ts)) });
  await q.add(fixesAt(T0, 3));
  assert.equal((await q.flush()).accepted, 2);
  assert.deepEqual(dropped, [T0 + 1]);
});

test("a refused token pauses the queue and keeps the fixes; resume() goes on", async () => {
  const server = new FixServer();
  server.failures = [new VicinoAuthError("POST /v1/locations", 401, problem(401, "replaced"), "revoked")];
  const q = new FixQueue(server);
  await q.add(fixesAt(T0, 5));
  await assert.rejects(q.flush(), (e: unknown) => e instanceof VicinoAuthError && e.reason === "revoked");
  assert.ok(q.paused);
  assert.equal(await q.pending(), 5);
  q.resume();
  assert.equal((await q.flush()).accepted, 5);
});

test("the timer flushes; reaching flushAt flushes at once; errors go to onError", async () => {
  const server = new FixServer();
  const errors: unknown[] = [];
  const q = new FixQueue(server, { flushIntervalMs: 20, flushAt: 10, onError: (e) => errors.push(e) });
  q.start();
  try {
    await q.add(fixesAt(T0, 3));
    await waitFor(() => server.processed.length === 3);
    server.failures = ["before"];
    await q.add(fixesAt(T0 + 10, 1));
    await waitFor(() => errors.length === 1 && server.processed.length === 4);
    const quiet = new FixQueue(server, { flushIntervalMs: 60_000, flushAt: 10 });
    quiet.start();
    await quiet.add(fixesAt(T0 + 20, 10));
    await waitFor(() => server.processed.length === 14);
    quiet.stop();
  } finally {
    q.stop();
  }
});

test("one flush at a time: a second call joins the first", async () => {
  const server = new FixServer();
  const q = new FixQueue(server);
  await q.add(fixesAt(T0, 10));
  const [a, b] = await Promise.all([q.flush(), q.flush()]);
  assert.equal(a, b);
  assert.equal(server.batches.length, 1);
});

test("clear() forgets everything, in storage too", async () => {
  const storage = new MemoryStorage();
  const q = new FixQueue(new FixServer(), { storage });
  await q.add(fixesAt(T0, 120));
  assert.ok(storage.keys().length >= 3);
  await q.clear();
  assert.deepEqual(storage.keys(), []);
  assert.equal(await new FixQueue(new FixServer(), { storage }).pending(), 0);
});

test("clear() while a batch is in flight: nothing is written back afterwards", async () => {
  const storage = new MemoryStorage();
  const server = new FixServer();
  let release!: () => void;
  const gate = new Promise<void>((r) => { release = r; });
  const q = new FixQueue({ send: async (f) => { await gate; return server.send(f); } }, { storage });
  await q.add(fixesAt(T0, 10));
  const flushing = q.flush();
  await new Promise((r) => setTimeout(r, 10));
  await q.clear(); // logout, while the timer's flush waits for its answer
  release();
  await flushing;
  assert.deepEqual(storage.keys(), []);
});

async function waitFor(cond: () => boolean, timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("condition not reached");
    await new Promise((r) => setTimeout(r, 5));
  }
}
