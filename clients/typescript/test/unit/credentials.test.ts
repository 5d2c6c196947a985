import assert from "node:assert/strict";
import { test } from "node:test";

import { Credentials, VicinoAuthError, VicinoNetworkError } from "../../src/index.js";
import { problem } from "../support/fakes.js";

const DAY = 86_400_000;

test("refreshed once when due (concurrent calls share it), and handed to the app", async () => {
  let now = 0;
  let calls = 0;
  const kept: string[] = [];
  const c = new Credentials({ token: "t0", expiresAt: 30 * DAY }, async () => {
    calls++;
    await new Promise((r) => setTimeout(r, 5));
    return { token: `t${calls}`, expiresAt: now + 30 * DAY };
  }, { refreshBeforeMs: 7 * DAY, now: () => now, onTokenRefreshed: (t) => { kept.push(t.token); } });
  assert.equal(await c.bearer(), "t0");
  now = 23 * DAY + 1;
  assert.deepEqual(await Promise.all([c.bearer(), c.bearer(), c.bearer()]), ["t1", "t1", "t1"]);
  assert.equal(calls, 1);
  assert.deepEqual(kept, ["t1"]);
});

test("a refresh that does not get through keeps the current token and waits before trying again", async () => {
  let now = 29 * DAY;
  let calls = 0;
  const c = new Credentials({ token: "t0", expiresAt: 30 * DAY }, async () => {
    calls++;
    throw new VicinoNetworkError("offline", "POST /v1/devices/{device_id}/token", null, false);
  }, { now: () => now, refreshRetryMs: 60_000 });
  assert.equal(await c.bearer(), "t0");
  assert.equal(await c.bearer(), "t0");
  assert.equal(calls, 1);
  now += 60_000;
  await c.bearer();
  assert.equal(calls, 2);
});

test("a refused refresh keeps the current token in use and is not asked again; set() takes a new one", async () => {
  let calls = 0;
  const c = new Credentials({ token: "t0", expiresAt: 2 * DAY }, async () => {
    calls++;
    throw new VicinoAuthError("POST /v1/devices/{device_id}/token", 401, problem(401, "this token was already refreshed"), "revoked");
  }, { now: () => DAY });
  assert.equal(await c.bearer(), "t0", "still valid: the calls go on with it until the server refuses it");
  assert.equal(await c.bearer(), "t0");
  assert.equal(calls, 1);
  assert.equal(c.refused?.reason, "revoked");
  await assert.rejects(c.refreshNow(), (e: unknown) => e instanceof VicinoAuthError, "asked explicitly: the refusal");
  c.set({ token: "new", expiresAt: 40 * DAY });
  assert.equal(c.refused, undefined);
  assert.equal(await c.bearer(), "new");
});
