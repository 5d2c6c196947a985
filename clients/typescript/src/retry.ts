// When to try again (pure): exponential backoff with jitter, at least what `Retry-After` asks.

export interface RetryPolicy {
  /** attempts per call, the first included (a flush gives up then; its fixes stay queued) */
  maxAttempts: number;
  /** the first backoff step; each further failure doubles it */
  baseDelayMs: number;
  /** the longest backoff step */
  maxDelayMs: number;
  /** a `Retry-After` longer than this ends the call instead of waiting (the queue's timer comes back) */
  maxRetryAfterMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 8, baseDelayMs: 1000, maxDelayMs: 60_000, maxRetryAfterMs: 120_000 };

/** Statuses worth another try: the server is busy, away or asked us to slow down. */
export const RETRYABLE_STATUSES: ReadonlySet<number> = new Set([408, 425, 429, 502, 503, 504]);

/** `Retry-After` in milliseconds: delay-seconds or an HTTP date (RFC 9110 10.2.3); else undefined. */
export function parseRetryAfter(value: string | null | undefined, nowMs: number): number | undefined {
  if (value == null) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - nowMs);
}

/**
 * How long to wait after the `failures`-th failed attempt (1-based): "equal jitter" backoff
 * (half the step fixed, half random, so phones that failed together spread out), and never less
 * than `Retry-After` plus up to 10% (at most 1 s) of it.
 */
export function retryDelayMs(failures: number, policy: RetryPolicy, random: () => number, retryAfterMs?: number): number {
  const step = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** Math.max(0, failures - 1));
  const backoff = step / 2 + (random() * step) / 2;
  if (retryAfterMs === undefined) return Math.round(backoff);
  const asked = retryAfterMs + random() * Math.min(1000, retryAfterMs * 0.1);
  return Math.round(Math.max(asked, backoff));
}
