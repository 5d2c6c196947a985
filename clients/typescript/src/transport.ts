// HTTP to one base URL (the front door): typed by the generated `Operations`, with problem+json
// errors turned into the SDK's error tree and retries on what is worth retrying.
import { authFailure, type Problem, VicinoAuthError, type VicinoError, VicinoHttpError, VicinoNetworkError } from "./errors.js";
import type { OperationKey, Operations } from "./generated/types.js";
import { DEFAULT_RETRY, parseRetryAfter, RETRYABLE_STATUSES, type RetryPolicy, retryDelayMs } from "./retry.js";

export type FetchLike = (input: string, init: {
  method: string; headers: Record<string, string>; body?: string; signal?: AbortSignal;
}) => Promise<{ status: number; headers: { get(name: string): string | null }; text(): Promise<string> }>;

/** One retry about to happen: for logs and tests (`onRetry`). */
export interface RetryEvent {
  operation: string;
  /** the attempt that failed (1 = the first) */
  attempt: number;
  /** how long the SDK waits before the next attempt */
  delayMs: number;
  error: VicinoError;
}

export interface TransportOptions {
  /** the front door, e.g. `https://api.example.com` (every route of the public surface is under it) */
  baseUrl: string;
  /** default: the global `fetch` (React Native, browsers, Node >= 18) */
  fetch?: FetchLike;
  /** per attempt; the request is aborted after it (default 30 s) */
  timeoutMs?: number;
  retry?: Partial<RetryPolicy>;
  onRetry?: (event: RetryEvent) => void;
  /** injectable for tests: the clock (epoch ms), the jitter's randomness and the wait */
  now?: () => number;
  random?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

type Params<K extends OperationKey> = Operations[K]["path"];
type Query<K extends OperationKey> = Operations[K]["query"];

export interface CallOptions<K extends OperationKey> {
  path?: Params<K>;
  query?: Query<K>;
  body?: Operations[K]["body"];
  /** the bearer token, read again before each attempt (a refreshed token is used at once) */
  authorization?: () => Promise<string> | string;
  /** retry on network errors and retryable statuses (default true) */
  retry?: boolean;
  /** also retry these statuses (POST /v1/locations: 409, too many concurrent reports) */
  retryAlso?: readonly number[];
  /** give up (with the last error) rather than wait past this epoch ms */
  deadline?: number;
  /** a 404 here means the calling device itself is gone (a VicinoAuthError, `revoked`) */
  deviceScoped?: boolean;
}

export class Transport {
  readonly baseUrl: string;
  readonly policy: RetryPolicy;
  private readonly fetchImpl: FetchLike;
  private readonly timeoutMs: number;
  readonly now: () => number;
  private readonly random: () => number;
  readonly sleep: (ms: number) => Promise<void>;
  private readonly onRetry?: (event: RetryEvent) => void;

  constructor(options: TransportOptions) {
    if (!/^https?:\/\//.test(options.baseUrl)) throw new TypeError(`baseUrl must be http(s): ${options.baseUrl}`);
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    const globalFetch = (globalThis as { fetch?: FetchLike }).fetch;
    if (!options.fetch && !globalFetch) throw new TypeError("no fetch: pass `fetch` in the options");
    // called as a plain function: browsers refuse `fetch` called as a method of another object
    this.fetchImpl = options.fetch ?? ((input, init) => globalFetch!(input, init));
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.policy = { ...DEFAULT_RETRY, ...options.retry };
    this.now = options.now ?? Date.now;
    this.random = options.random ?? Math.random;
    this.sleep = options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
    this.onRetry = options.onRetry;
  }

  /** The URL of an operation (`"GET /v1/devices/{device_id}/regions"`) with its parameters. */
  url<K extends OperationKey>(operation: K, path?: Params<K>, query?: Query<K>): string {
    const template = operation.slice(operation.indexOf(" ") + 1);
    const params = (path ?? {}) as Record<string, string>;
    const filled = template.replace(/\{([^}]+)\}/g, (_, name: string) => {
      const v = params[name];
      if (v === undefined) throw new TypeError(`${operation}: missing path parameter ${name}`);
      return encodeURIComponent(String(v));
    });
    const q = Object.entries((query ?? {}) as Record<string, unknown>)
      .filter(([, v]) => v !== undefined && v !== null)
      .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
    return this.baseUrl + filled + (q.length ? `?${q.join("&")}` : "");
  }

  /** One operation, retried as `options` says; resolves with its 2xx body (undefined for 204). */
  async call<K extends OperationKey>(operation: K, options: CallOptions<K> = {}): Promise<Operations[K]["response"]> {
    const retrying = options.retry ?? true;
    for (let attempt = 1; ; attempt++) {
      let error: VicinoError;
      try {
        return await this.once(operation, options);
      } catch (e) {
        if (!(e instanceof VicinoNetworkError || e instanceof VicinoHttpError)) throw e;
        error = e;
      }
      const status = error instanceof VicinoHttpError ? error.status : undefined;
      const worthIt = error instanceof VicinoNetworkError ||
        (status !== undefined && (RETRYABLE_STATUSES.has(status) || (options.retryAlso ?? []).includes(status)));
      if (!retrying || !worthIt || error instanceof VicinoAuthError || attempt >= this.policy.maxAttempts) throw error;
      const retryAfter = error instanceof VicinoHttpError ? error.retryAfterMs : undefined;
      if (retryAfter !== undefined && retryAfter > this.policy.maxRetryAfterMs) throw error;
      const delayMs = retryDelayMs(attempt, this.policy, this.random, retryAfter);
      if (options.deadline !== undefined && this.now() + delayMs > options.deadline) throw error;
      this.onRetry?.({ operation, attempt, delayMs, error });
      await this.sleep(delayMs);
    }
  }

  private async once<K extends OperationKey>(operation: K, options: CallOptions<K>): Promise<Operations[K]["response"]> {
    const method = operation.slice(0, operation.indexOf(" "));
    const headers: Record<string, string> = { Accept: "application/json" };
    if (options.authorization) headers.Authorization = `Bearer ${await options.authorization()}`;
    let body: string | undefined;
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    const controller = typeof AbortController === "function" ? new AbortController() : undefined;
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; controller?.abort(); }, this.timeoutMs);
    let status: number;
    let text: string;
    let retryAfterHeader: string | null;
    try {
      const res = await this.fetchImpl(this.url(operation, options.path, options.query),
        { method, headers, body, signal: controller?.signal });
      status = res.status;
      retryAfterHeader = res.headers.get("retry-after");
      text = await res.text();
    } catch (cause) {
      const what = timedOut ? `no answer within ${this.timeoutMs} ms` : `no connection (${describe(cause)})`;
      throw new VicinoNetworkError(`${operation}: ${what}`, operation, cause, timedOut);
    } finally {
      clearTimeout(timer);
    }
    if (status >= 200 && status < 300) {
      try {
        return (text ? JSON.parse(text) : undefined) as Operations[K]["response"];
      } catch {
        throw new VicinoHttpError(operation, status, { status, detail: `an answer that is not JSON: ${text.slice(0, 100)}` });
      }
    }
    let problem: Problem;
    try {
      problem = text ? (JSON.parse(text) as Problem) : { status };
    } catch {
      problem = { status, detail: text.slice(0, 300) };
    }
    if (typeof problem !== "object" || problem === null) problem = { status, detail: String(problem) };
    const reason = authFailure(status, problem.detail, options.deviceScoped === true && /not registered/i.test(problem.detail ?? ""));
    if (reason) throw new VicinoAuthError(operation, status, problem, reason);
    throw new VicinoHttpError(operation, status, problem, parseRetryAfter(retryAfterHeader, this.now()));
  }
}

function describe(e: unknown): string {
  if (e instanceof Error) {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    return cause?.code ?? cause?.message ?? e.message;
  }
  return String(e);
}
