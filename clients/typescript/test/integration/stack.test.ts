// The SDK against a real stack (`vicino up`, empty, started by tests/e2e/test_sdk.py): no mock of
// ours anywhere. The tests run in order, one device each.
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import {
  type BatchReport, type DeviceOut, type DeviceToken, type FetchLike, type Fix, type RegionSet, type RetryEvent,
  Transport, VicinoAppBackend, VicinoAuthError, VicinoClient, type VicinoClientOptions, VicinoHttpError, distanceM,
  instantMs,
} from "../../src/index.js";
import { FileStorage } from "../../src/node.js";
import { api, putStore, redisOutage, stackFromEnv, until } from "../support/stack.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const stack = stackFromEnv();
const backend = new VicinoAppBackend({ baseUrl: stack.baseUrl, apiKey: stack.appBackendKey });
const STORE = { id: "sdk-store", lat: 45.0, lon: 9.0 };
const AWAY = { lat: 45.01, lon: 9.0 }; // 1.1 km north of it
const nowS = () => Date.now() / 1000;

async function register(name: string): Promise<DeviceOut> {
  return backend.registerDevice({ device_id: `sdk-${name}`, customer_id: `sdk-customer-${name}`, platform: "android",
    push_token: `fcm-sdk-${name}-token`, timezone: "Europe/Rome", locale: "it-IT" });
}

function client(reg: DeviceOut, extra: Partial<VicinoClientOptions> = {}): VicinoClient {
  return new VicinoClient({ baseUrl: stack.baseUrl, deviceId: reg.device_id, customerId: reg.customer_id,
    token: reg.token, tokenExpiresAt: reg.token_expires_at, ...extra });
}

/** Asks the server how it sees one more fix at `ts` (the SDK's queue would drop it as a duplicate):
 * proves which fix it processed last. */
async function probe(token: string, deviceId: string, ts: number): Promise<string | undefined> {
  const answer = await new Transport({ baseUrl: stack.baseUrl }).call("POST /v1/locations", {
    body: { device_id: deviceId, fixes: [{ ...AWAY, accuracy_m: 10, ts }] }, authorization: () => token });
  return answer.accepted ? "accepted" : answer.ignored[0]?.reason;
}

test("setup: a store, and the front door's OpenAPI is the SDK's snapshot", async () => {
  await putStore(stack, STORE.id, STORE.lat, STORE.lon);
  const live = await (await fetch(`${stack.baseUrl}/openapi.json`)).json();
  const snapshot = JSON.parse(await readFile(join(ROOT, "openapi.json"), "utf8"));
  assert.deepEqual(live, snapshot, "clients/typescript/openapi.json is stale against the front door's /openapi.json: " +
    "run `.venv/bin/python clients/typescript/scripts/update_openapi.py` and commit both files");
});

test("consent screens: the device sets and reads its customer's consent, and no one else's", async () => {
  const reg = await register("consent");
  const c = client(reg);
  const set = await c.setConsent({ location: true, marketing: false, personalisation: true });
  assert.equal(set.location, true);
  const got = await c.getConsent();
  assert.deepEqual([got.location, got.marketing, got.personalisation], [true, false, true]);
  assert.ok(got.history && got.history.length >= 1, "kept with an audit trail");
  const stranger = client({ ...reg, customer_id: "sdk-customer-backlog" });
  await assert.rejects(stranger.getConsent(),
    (e: unknown) => e instanceof VicinoAuthError && e.reason === "forbidden" && e.code === "not_own_customer");
});

test("2,000 fixes after an offline hour arrive once and in order, through a killed app and a 429", async () => {
  const reg = await register("backlog");
  await backend.setConsent(reg.customer_id, { location: true, marketing: false, personalisation: false });
  const dir = await mkdtemp(join(tmpdir(), "vicino-sdk-backlog-"));
  // an hour offline: a fix every 1.8 s, outside, 21 minutes at the store, outside again
  const start = nowS() - 3600;
  const fixes: Fix[] = Array.from({ length: 2000 }, (_, i) => {
    const inside = i >= 600 && i < 1300;
    return { ...(inside ? STORE : AWAY), accuracy_m: 10, ts: Math.round((start + i * 1.8) * 1000) / 1000 };
  });
  const offline: FetchLike = async () => { throw new TypeError("fetch failed"); };
  const failures: unknown[] = [];
  const first = client(reg, { storage: new FileStorage(dir), fetch: offline, retry: { maxAttempts: 1 },
    fixes: { flushIntervalMs: 20, onError: (e) => failures.push(e) } });
  first.start();
  for (let i = 0; i < fixes.length; i += 100) {
    await first.addFix(fixes.slice(i, i + 100)); // collected over the hour, a piece at a time
    await new Promise((r) => setTimeout(r, 2));
  }
  await until("a failed flush while offline", 5000, async () => (failures.length ? true : undefined));
  first.stop(); // the app is killed: `first` is never used again

  const batches: BatchReport[] = [];
  const retries: RetryEvent[] = [];
  const second = client(reg, { storage: new FileStorage(dir), onRetry: (e) => retries.push(e),
    fixes: { onBatch: (b) => batches.push(b) } });
  assert.equal(await second.fixes.pending(), 2000);
  const result = await second.flush();
  assert.deepEqual(result, { batches: 4, accepted: 2000, ignored: 0, pending: 0 });
  assert.deepEqual(batches.map((b) => b.fixes.length), [500, 500, 500, 500]);
  const sent = batches.flatMap((b) => b.fixes.map((f) => f.ts));
  assert.deepEqual(sent, fixes.map((f) => f.ts), "every fix once, in order");
  // the visit the server saw: one enter at the first fix inside, a dwell, one exit at the first fix outside
  const events = batches.flatMap((b) => b.result.events);
  assert.deepEqual(events.map((e) => e.type), ["enter", "dwell", "exit"]);
  assert.equal(new Set(events.map((e) => e.visit_id)).size, 1);
  assert.equal(instantMs(events[0].ts), (fixes[600].ts as number) * 1000);
  assert.equal(instantMs(events[2].ts), (fixes[1300].ts as number) * 1000);
  // the server's own record: its last processed fix is the last one sent (nothing after, nothing twice)
  const last = fixes[1999].ts as number;
  assert.equal(await probe(reg.token, reg.device_id, last), "duplicate");
  assert.equal(await probe(reg.token, reg.device_id, fixes[1000].ts as number), "out_of_order");
  // the stack limits this device to 2 location requests at once, then 1/s: the rest waited as told
  const limited = retries.filter((r) => r.error instanceof VicinoHttpError && r.error.status === 429);
  assert.ok(limited.length >= 1, `no 429 among ${retries.length} retries`);
  for (const r of limited) assert.ok(r.delayMs >= (r.error as VicinoHttpError).retryAfterMs!, "waited less than Retry-After");
  assert.deepEqual(await readdir(dir), [encodeURIComponent(`vicino.${reg.device_id}.fixes.index`)], "storage emptied");
});

test("a 503 storm (Redis stopped for 3 s) loses nothing", async () => {
  const reg = await register("storm");
  await backend.setConsent(reg.customer_id, { location: true, marketing: false, personalisation: false });
  const retries: RetryEvent[] = [];
  const batches: BatchReport[] = [];
  const c = client(reg, { onRetry: (e) => retries.push(e), fixes: { onBatch: (b) => batches.push(b) } });
  const start = nowS() - 1200;
  const fixes = Array.from({ length: 1000 }, (_, i) => ({ ...AWAY, accuracy_m: 10, ts: start + i }));
  await c.addFix(fixes);
  await redisOutage(stack, 3);
  const t0 = Date.now();
  const result = await c.flush();
  const took = Date.now() - t0;
  assert.deepEqual(result, { batches: 2, accepted: 1000, ignored: 0, pending: 0 });
  const unavailable = retries.filter((r) => r.error instanceof VicinoHttpError && r.error.status === 503);
  assert.ok(unavailable.length >= 2, `503s seen: ${unavailable.length}; retries: ${retries.map((r) => r.error.message)}`);
  for (const r of unavailable) assert.ok(r.delayMs >= 1000, "Retry-After: 1 not honoured");
  assert.ok(took >= 2000, `the flush went through ${took} ms after Redis stopped for 3 s`);
  assert.equal(await probe(reg.token, reg.device_id, start + 999), "duplicate");
});

test("a replaced or removed device token surfaces as VicinoAuthError; the queue keeps its fixes", async () => {
  const reg = await register("revoked");
  await backend.setConsent(reg.customer_id, { location: true, marketing: false, personalisation: false });
  const refusals: VicinoAuthError[] = [];
  const c = client(reg, { onAuthError: (e) => refusals.push(e) });
  await c.addFix({ ...AWAY, accuracy_m: 10, ts: nowS() - 60 });
  assert.equal((await c.flush()).accepted, 1);
  const again = await register("revoked"); // the app backend registers the device again: the old token stops
  assert.equal(again.rotated, true);
  await c.addFix({ ...AWAY, accuracy_m: 10, ts: nowS() - 30 });
  await assert.rejects(c.flush(),
    (e: unknown) => e instanceof VicinoAuthError && e.reason === "revoked" && e.status === 401 && e.code === "token_revoked");
  assert.equal(refusals.length, 1);
  assert.ok(c.fixes.paused);
  assert.equal(await c.fixes.pending(), 1, "kept for the new token");
  c.setToken(again.token, again.token_expires_at);
  assert.equal((await c.flush()).accepted, 1);
  await backend.deleteDevice(reg.device_id); // removed: its token stops (401, as on every route)
  await c.addFix({ ...AWAY, accuracy_m: 10, ts: nowS() - 10 });
  await assert.rejects(c.flush(),
    (e: unknown) => e instanceof VicinoAuthError && e.reason === "revoked" && e.status === 401 && e.code === "token_revoked");
  const expired = client({ ...reg, token: stack.expiredToken });
  await assert.rejects(expired.getConsent(),
    (e: unknown) => e instanceof VicinoAuthError && e.reason === "token_expired" && e.code === "token_expired");
});

test("region sync: the nearest fences as enclosing circles, asked again only outside the resync circle", async () => {
  const reg = await register("regions");
  await backend.setConsent(reg.customer_id, { location: true, marketing: false, personalisation: false });
  const storage = new FileStorage(await mkdtemp(join(tmpdir(), "vicino-sdk-regions-")));
  const changes: RegionSet[] = [];
  const c = client(reg, { storage, regions: { limit: 19, onChange: (s) => { changes.push(s); } } });
  const near = { lat: STORE.lat + 0.002, lon: STORE.lon }; // 222 m north of the store
  const set = await c.syncRegions(near.lat, near.lon);
  assert.ok(set, "the first sync asks");
  assert.equal(set.regions[0].store_id, STORE.id, "nearest first");
  const r = set.regions[0];
  assert.ok(distanceM(r.lat, r.lon, STORE.lat, STORE.lon) + 50 <= r.radius_m + 0.5, "the circle encloses the 50 m fence");
  assert.ok(set.resync_radius_m > 0 && set.resync_radius_m < 200_000, String(set.resync_radius_m));
  assert.equal(await c.syncRegions(near.lat + 0.0001, near.lon), undefined, "11 m further: no request");
  const relaunched = client(reg, { storage });
  assert.equal((await relaunched.regions.current())?.regions[0].store_id, STORE.id, "kept for the next launch");
  const far = distanceM(near.lat, near.lon, near.lat + 1, near.lon) > set.resync_radius_m;
  assert.ok(far && await relaunched.syncRegions(near.lat + 1, near.lon), "outside the resync circle: asked again");
  assert.equal(changes.length, 1);
  const noConsent = await register("regions-no-consent");
  await assert.rejects(client(noConsent).fetchRegions(near.lat, near.lon),
    (e: unknown) => e instanceof VicinoHttpError && e.status === 409 && e.code === "consent_required");
});

test("push-token rotation: the new token is taken, a token not of the platform refused", async () => {
  const reg = await register("push-token");
  const c = client(reg);
  const out = await c.updatePushToken("fcm-rotated-token:abc_123");
  assert.deepEqual([out.device_id, out.platform], [reg.device_id, "android"]);
  assert.ok(instantMs(out.push_token_updated_at) > 0);
  await assert.rejects(c.updatePushToken("not a token"), (e: unknown) => e instanceof VicinoHttpError && e.status === 422);
  assert.equal((await c.getConsent()).customer_id, reg.customer_id, "the device token was left as it was");
});

test("locale: stored canonical, forgotten with null, a tag the server cannot read refused", async () => {
  const reg = await register("locale");
  const c = client(reg);
  const out = await c.updateLocale("it_it");
  assert.deepEqual([out.device_id, out.locale], [reg.device_id, "it-IT"]);
  assert.ok(instantMs(out.locale_updated_at) > 0);
  assert.equal((await c.updateLocale(null)).locale, null);
  await assert.rejects(c.updateLocale("xx"), (e: unknown) => e instanceof VicinoHttpError && e.status === 422);
});

test("token refresh before expiry: the new token is handed over, the old one works through the grace", async () => {
  const reg = await register("refresh");
  const kept: DeviceToken[] = [];
  const c = client(reg, { refreshBeforeMs: 31 * 86_400_000, onTokenRefreshed: (t) => { kept.push(t); } });
  await c.getConsent(); // due (31 days before a 30-day expiry): refreshed first
  assert.equal(kept.length, 1);
  assert.notEqual(kept[0].token, reg.token);
  assert.ok(kept[0].expiresAt > Date.now() + 29 * 86_400_000);
  assert.equal(c.credentials.token.token, kept[0].token);
  const old = client(reg, { refreshBeforeMs: 0 });
  assert.equal((await old.getConsent()).customer_id, reg.customer_id, "the old token, within its grace");
  await assert.rejects(old.refreshToken(),
    (e: unknown) => e instanceof VicinoAuthError && e.reason === "revoked" && e.code === "token_already_refreshed",
    "only the newest token may refresh");
  const again = await c.refreshToken();
  assert.notEqual(again.token, kept[0].token);
});

test("logout: queued fixes sent, the device removed with its own token, the queue and regions forgotten", async () => {
  const reg = await register("logout");
  await backend.setConsent(reg.customer_id, { location: true, marketing: false, personalisation: false });
  const dir = await mkdtemp(join(tmpdir(), "vicino-sdk-logout-"));
  const batches: BatchReport[] = [];
  const c = client(reg, { storage: new FileStorage(dir), fixes: { onBatch: (b) => batches.push(b) } });
  await c.syncRegions(AWAY.lat, AWAY.lon);
  await c.addFix([{ ...AWAY, accuracy_m: 10, ts: nowS() - 20 }, { ...AWAY, accuracy_m: 10, ts: nowS() - 10 }]);
  await c.logout();
  assert.equal(batches.reduce((n, b) => n + b.result.accepted, 0), 2, "sent before the device went");
  assert.deepEqual(await readdir(dir), [], "nothing of the device left on the phone");
  await assert.rejects(c.getConsent(),
    (e: unknown) => e instanceof VicinoAuthError && e.reason === "revoked" && e.code === "token_revoked");
  await c.logout(); // already removed: done
  await assert.rejects(backend.deleteDevice(reg.device_id), (e: unknown) => e instanceof VicinoHttpError && e.status === 404);
});

test("a push opened: a visit becomes a delivery, and its open is recorded once", async () => {
  const store = { id: "sdk-offer-store", lat: 45.2, lon: 9.2 };
  await putStore(stack, store.id, store.lat, store.lon);
  const offer = await api(stack, stack.operatorKey, "PUT", "/v1/offers/sdk-offer", {
    offer_id: "sdk-offer", title: "10% off candles", item_ids: ["sdk-item"], category: "CANDLE", price: 10,
    currency: "EUR", valid_from: nowS() - 3600, valid_to: nowS() + 86_400, store_ids: [store.id] });
  assert.ok(offer.status < 300, JSON.stringify(offer.body));
  const reg = await register("opener");
  await backend.setConsent(reg.customer_id, { location: true, marketing: true, personalisation: false });
  const c = client(reg);
  await c.addFix({ lat: store.lat, lon: store.lon, accuracy_m: 5, ts: nowS() - 1 });
  await c.fixes.flush();
  const delivery = await until("a delivery sent for the visit", 30_000, async () => {
    const r = await api(stack, stack.supportKey, "GET", `/v1/deliveries?device_id=${reg.device_id}`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    return (r.body.deliveries as { delivery_id: string; status: string; store_id: string }[])
      .find((d) => d.status === "sent" && d.store_id === store.id);
  });
  const opened = await c.reportOpened(delivery.delivery_id);
  assert.ok(opened.opened_at, "recorded");
  const again = await c.reportOpened(delivery.delivery_id);
  assert.equal(again.opened_at, opened.opened_at, "once");
  const other = client(await register("not-the-recipient"));
  await assert.rejects(other.reportOpened(delivery.delivery_id),
    (e: unknown) => e instanceof VicinoAuthError && e.reason === "forbidden" && e.code === "not_own_device");
});
