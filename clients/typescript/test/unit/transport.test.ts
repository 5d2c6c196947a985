import assert from "node:assert/strict";
import { test } from "node:test";

import { Transport, VicinoAuthError, VicinoHttpError, VicinoNetworkError } from "../../src/index.js";
import { problem, scriptedFetch, type Scripted } from "../support/fakes.js";

function transport(script: Scripted[], extra: Partial<ConstructorParameters<typeof Transport>[0]> = {}) {
  const fetch = scriptedFetch(script);
  const slept: number[] = [];
  let clock = Date.parse("2026-11-26T10:00:00Z");
  const t = new Transport({
    baseUrl: "https://api.example.com/", fetch, random: () => 0.5, now: () => clock,
    sleep: async (ms) => { slept.push(ms); clock += ms; }, ...extra,
  });
  return { t, fetch, slept };
}

const OK = { status: 200, body: { customer_id: "c1", location: true, marketing: false, personalisation: false, updated_at: null } };
const consent = { path: { customer_id: "c/1 ü" }, authorization: () => "tok" };

test("one base URL; path parameters escaped; bearer and JSON headers", async () => {
  const { t, fetch } = transport([OK]);
  await t.call("GET /v1/customers/{customer_id}/consent", consent);
  assert.equal(fetch.requests[0].url, "https://api.example.com/v1/customers/c%2F1%20%C3%BC/consent");
  assert.equal(fetch.requests[0].headers.Authorization, "Bearer tok");
  assert.equal(t.url("GET /v1/stores", undefined, { lat: 45.1, lon: 9, radius_m: undefined }),
    "https://api.example.com/v1/stores?lat=45.1&lon=9");
});

test("503 and 429 are retried no sooner than Retry-After (seconds or HTTP date)", async () => {
  const { t, fetch, slept } = transport([
    { status: 503, body: problem(503, "Redis is unavailable"), headers: { "Retry-After": "2" } },
    { status: 429, body: problem(429, "rate limit"), headers: { "Retry-After": "Thu, 26 Nov 2026 10:00:07 GMT" } },
    OK,
  ]);
  const retries: number[] = [];
  const t2 = new Transport({ baseUrl: t.baseUrl, fetch, random: () => 0.5, now: t.now, sleep: t.sleep,
    onRetry: (e) => retries.push((e.error as VicinoHttpError).status) });
  const body = await t2.call("GET /v1/customers/{customer_id}/consent", consent);
  assert.equal(body.location, true);
  assert.deepEqual(retries, [503, 429]);
  assert.ok(slept[0] >= 2000 && slept[0] <= 2200, `first wait ${slept[0]}`);
  assert.ok(slept[1] >= 5000, `second wait ${slept[1]}: the date was 7 s after the first answer, 2 s went by`);
});

test("a network error is retried; the error says no answer came", async () => {
  const { t, slept } = transport([{ status: 0, fail: new TypeError("fetch failed") }, OK]);
  await t.call("GET /v1/customers/{customer_id}/consent", consent);
  assert.equal(slept.length, 1);
  const { t: t1 } = transport(Array(8).fill({ status: 0, fail: new TypeError("fetch failed") }));
  await assert.rejects(t1.call("GET /v1/customers/{customer_id}/consent", consent), (e: unknown) =>
    e instanceof VicinoNetworkError && /no connection/.test(e.message) && !e.timedOut);
});

test("401/403 stop at once with a typed reason the app can act on", async () => {
  const cases: [number, string, string][] = [
    [401, "token expired; register the device again for a new one", "token_expired"],
    [401, "this device token was replaced by a newer registration", "revoked"],
    [401, "this device token was revoked (the device was removed or registered again)", "revoked"],
    [401, "this device token was already refreshed: only the newest token may be refreshed", "revoked"],
    [401, "invalid token signature", "invalid"],
    [403, "a device token may only act for its own customer", "forbidden"],
  ];
  for (const [status, detail, reason] of cases) {
    const { t, fetch } = transport([{ status, body: problem(status, detail) }, OK]);
    await assert.rejects(t.call("GET /v1/customers/{customer_id}/consent", consent),
      (e: unknown) => e instanceof VicinoAuthError && e.reason === reason && e.status === status, detail);
    assert.equal(fetch.requests.length, 1, "not retried");
  }
  // a device that is gone (removed): revoked, where the call is the device's own
  const { t } = transport([{ status: 404, body: problem(404, "device 'd1' is not registered") }]);
  await assert.rejects(t.call("GET /v1/customers/{customer_id}/consent", { ...consent, deviceScoped: true }),
    (e: unknown) => e instanceof VicinoAuthError && e.reason === "revoked");
});

test("other 4xx are not retried; 409 only where asked", async () => {
  const { t, fetch } = transport([{ status: 409, body: problem(409, "retry") }]);
  await assert.rejects(t.call("GET /v1/customers/{customer_id}/consent", consent),
    (e: unknown) => e instanceof VicinoHttpError && e.status === 409);
  assert.equal(fetch.requests.length, 1);
  const { t: t2 } = transport([{ status: 409, body: problem(409, "too many concurrent") }, OK]);
  await t2.call("GET /v1/customers/{customer_id}/consent", { ...consent, retryAlso: [409] });
});

test("gives up after maxAttempts, on a Retry-After beyond the limit, and before a deadline", async () => {
  const busy = { status: 503, body: problem(503, "away"), headers: { "Retry-After": "1" } };
  const { t, fetch } = transport(Array(10).fill(busy), { retry: { maxAttempts: 3 } });
  await assert.rejects(t.call("GET /v1/customers/{customer_id}/consent", consent), VicinoHttpError);
  assert.equal(fetch.requests.length, 3);
  const { t: t2, fetch: f2 } = transport([{ ...busy, headers: { "Retry-After": "3600" } }]);
  await assert.rejects(t2.call("GET /v1/customers/{customer_id}/consent", consent),
    (e: unknown) => e instanceof VicinoHttpError && e.retryAfterMs === 3_600_000);
  assert.equal(f2.requests.length, 1);
  const { t: t3, fetch: f3 } = transport(Array(10).fill(busy));
  await assert.rejects(t3.call("GET /v1/customers/{customer_id}/consent", { ...consent, deadline: t3.now() + 2500 }));
  assert.equal(f3.requests.length, 2, "1 s + 1 s of waits fit before the deadline, a third wait does not");
});

test("a request without an answer in time is aborted: a timeout, not a hang", async () => {
  const never: typeof fetch = ((_: string, init: { signal?: AbortSignal }) => new Promise((_, reject) => {
    init.signal?.addEventListener("abort", () => reject(new Error("aborted")));
  })) as unknown as typeof fetch;
  const t = new Transport({ baseUrl: "http://127.0.0.1:9", fetch: never as never, timeoutMs: 50, retry: { maxAttempts: 1 } });
  await assert.rejects(t.call("GET /v1/customers/{customer_id}/consent", consent),
    (e: unknown) => e instanceof VicinoNetworkError && e.timedOut);
});
