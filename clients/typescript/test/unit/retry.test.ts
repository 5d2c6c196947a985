import assert from "node:assert/strict";
import { test } from "node:test";

import { DEFAULT_RETRY, parseRetryAfter, retryDelayMs } from "../../src/index.js";

test("Retry-After: delay-seconds, an HTTP date, or nothing usable", () => {
  const now = Date.parse("2026-11-26T10:00:00Z");
  assert.equal(parseRetryAfter("3", now), 3000);
  assert.equal(parseRetryAfter(" 0 ", now), 0);
  assert.equal(parseRetryAfter("Thu, 26 Nov 2026 10:00:05 GMT", now), 5000);
  assert.equal(parseRetryAfter("Thu, 26 Nov 2026 09:59:00 GMT", now), 0, "a date in the past: at once");
  assert.equal(parseRetryAfter("soon", now), undefined);
  assert.equal(parseRetryAfter(null, now), undefined);
});

test("backoff doubles per failure within [step/2, step], capped, with jitter", () => {
  const p = { ...DEFAULT_RETRY, baseDelayMs: 1000, maxDelayMs: 8000 };
  assert.deepEqual([1, 2, 3, 4, 5].map((n) => retryDelayMs(n, p, () => 0)), [500, 1000, 2000, 4000, 4000]);
  assert.deepEqual([1, 2, 3, 4, 5].map((n) => retryDelayMs(n, p, () => 1)), [1000, 2000, 4000, 8000, 8000]);
});

test("never sooner than Retry-After, plus at most 10% (1 s) of it", () => {
  const p = { ...DEFAULT_RETRY, baseDelayMs: 100 };
  assert.equal(retryDelayMs(1, p, () => 0, 2000), 2000);
  assert.equal(retryDelayMs(1, p, () => 1, 2000), 2200);
  assert.equal(retryDelayMs(1, p, () => 1, 60_000), 61_000);
  // a long backoff wins over a short Retry-After
  assert.equal(retryDelayMs(8, { ...p, maxDelayMs: 60_000 }, () => 0, 1000), 6400);
});
