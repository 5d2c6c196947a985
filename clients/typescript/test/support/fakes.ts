// Test doubles for the unit tests only (the integration tests run against the real stack):
// a scripted fetch, and a fix sender that keeps the server's rule for fixes it has processed.
import type { FetchLike, FixSender, LocationResultOut, WireFix } from "../../src/index.js";

export interface Scripted {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
  /** throw this instead of answering (a network error) */
  fail?: Error;
}

export interface SeenRequest {
  url: string;
  method: string;
  headers: Record<string, string>;
  body?: unknown;
}

/** A fetch that answers from a script, one entry per call, and records the requests. */
export function scriptedFetch(script: Scripted[]): FetchLike & { requests: SeenRequest[] } {
  const requests: SeenRequest[] = [];
  const f = (async (url: string, init: { method: string; headers: Record<string, string>; body?: string }) => {
    requests.push({ url, method: init.method, headers: init.headers, body: init.body ? JSON.parse(init.body) : undefined });
    const next = script.shift();
    if (!next) throw new Error("script exhausted");
    if (next.fail) throw next.fail;
    const headers = new Map(Object.entries(next.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
    return {
      status: next.status,
      headers: { get: (name: string) => headers.get(name.toLowerCase()) ?? null },
      text: async () => (next.body === undefined ? "" : JSON.stringify(next.body)),
    };
  }) as FetchLike & { requests: SeenRequest[] };
  f.requests = requests;
  return f;
}

export function problem(status: number, detail: string, errors?: { field: string; message: string }[]) {
  return { type: "about:blank", title: "Error", status, detail, ...(errors ? { errors } : {}) };
}

/**
 * The geo service's rule for one device, in memory: fixes of a batch in time order, one with the
 * last processed ts is a `duplicate`, an older one `out_of_order`. `failures` makes the next
 * sends fail: "before" (nothing processed) or "after" (processed, answer lost).
 */
export class FixServer implements FixSender {
  lastTs = -Infinity;
  processed: WireFix[] = [];
  batches: WireFix[][] = [];
  failures: ("before" | "after" | Error)[] = [];

  async send(fixes: WireFix[]): Promise<LocationResultOut> {
    this.batches.push(fixes);
    const failure = this.failures.shift();
    if (failure instanceof Error) throw failure;
    if (failure === "before") throw new Error("connection refused");
    const ignored: LocationResultOut["ignored"] = [];
    let accepted = 0;
    const order = fixes.map((f, index) => ({ f, index })).sort((a, b) => a.f.ts - b.f.ts);
    for (const { f, index } of order) {
      if (f.ts <= this.lastTs) {
        ignored.push({ index, reason: f.ts === this.lastTs ? "duplicate" : "out_of_order" });
        continue;
      }
      this.lastTs = f.ts;
      this.processed.push(f);
      accepted++;
    }
    if (failure === "after") throw new Error("connection reset after the server processed the batch");
    return { accepted, ignored, events: [], location_consent: true };
  }
}

export function fixesAt(start: number, n: number, step = 1): { lat: number; lon: number; accuracy_m: number; ts: number }[] {
  return Array.from({ length: n }, (_, i) => ({ lat: 45 + i * 1e-5, lon: 9, accuracy_m: 10, ts: start + i * step }));
}
