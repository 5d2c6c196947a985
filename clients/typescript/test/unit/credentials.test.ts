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

test("a refused refresh is a VicinoAuthError; set() takes a token from elsewhere", async () => {
  const c = new Credentials({ token: "t0", expiresAt: 0 }, async () => {
    throw new VicinoAuthError("POST /v1/devices/{device_id}/token", 401, problem(401, "token expired"), "token_expired");
  }, { now: () => 1 });
  await assert.rejects(c.bearer(), (e: unknown) => e instanceof VicinoAuthError && e.reason === "token_expired");
  assert.equal(c.refused?.reason, "token_expired");
  c.set({ token: "new", expiresAt: 40 * DAY });
  assert.equal(c.refused, undefined);
  assert.equal(await c.bearer(), "new");
});
