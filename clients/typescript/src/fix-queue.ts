// The fix queue: fixes are persisted as they are added, sent in order in batches of at most 500,
// and removed from storage only once the server has answered 200 for their batch.
//
// Storage layout (under `key`, default "vicino.fixes"): `<key>.index` = {v, segments: [ids],
// next}, and `<key>.seg.<id>` = the fixes of one segment (at most 50), oldest segment first.
// Adding a fix rewrites one small segment, not the whole backlog. A batch is the oldest segments
// (sealed: nothing is appended to them while they are in flight); once accepted, their keys
// are removed, then the index. A segment listed in the index but missing from storage was
// accepted just before the app was killed: skipped on load.
//
// Delivery is at least once: a batch whose answer was lost (connection cut after the server
// processed it, app killed before the removal) is sent again, and the server ignores what it has
// already processed (`duplicate`, `out_of_order`): it never becomes a second visit.
import { type VicinoError, VicinoAuthError, VicinoHttpError } from "./errors.js";
import type { FixIn, LocationResultOut } from "./generated/types.js";
import { MemoryStorage, type KeyValueStorage } from "./storage.js";
import { fixSeconds } from "./times.js";

export const MAX_BATCH = 500;
const SEGMENT = 50;
const MAX_ROUNDS = 100_000; // batches in one flush: 50M fixes, a bound rather than a limit

/** A location fix as the app hands it over. */
export interface Fix {
  lat: number;
  lon: number;
  /** horizontal accuracy in metres (> 0) */
  accuracy_m: number;
  /** epoch seconds, a Date, or RFC 3339 with an offset (not epoch milliseconds: refused) */
  ts: number | Date | string;
  speed_mps?: number | null;
}

/** A fix as the queue keeps and sends it: its time in epoch seconds (the API also reads RFC 3339,
 * hence the generated `FixIn`'s `string | number`; the queue always writes the number). */
export type WireFix = FixIn & { ts: number };

/** What sends one batch: the client's POST /v1/locations (retries included). */
export interface FixSender {
  send(fixes: WireFix[], deadline?: number): Promise<LocationResultOut>;
}

export interface BatchReport {
  /** the batch as sent, in order */
  fixes: WireFix[];
  /** the server's answer: `accepted`, `ignored` (with reasons), visit `events`, `location_consent` */
  result: LocationResultOut;
}

export interface FlushResult {
  /** batches the server answered with 200 */
  batches: number;
  /** fixes it processed; resent fixes come back as ignored (`duplicate`, `out_of_order`), not here */
  accepted: number;
  ignored: number;
  /** fixes still queued (added while the flush ran) */
  pending: number;
}

export interface FixQueueOptions {
  /** default: MemoryStorage (a killed app loses its queue); AsyncStorage on React Native */
  storage?: KeyValueStorage;
  /** prefix of the storage keys (one queue per device) */
  key?: string;
  /** fixes per request, 1-500 (default 500) */
  maxBatch?: number;
  /** the timer's period once `start()`ed (default 60 s); 0: no timer */
  flushIntervalMs?: number;
  /** once started, flush as soon as this many fixes are queued (default: maxBatch) */
  flushAt?: number;
  /** how many recently sent fixes are remembered to drop exact duplicates (default 2,000) */
  dedupWindow?: number;
  onBatch?: (report: BatchReport) => void;
  /** fixes the server refused outright (422: too old, in the future, malformed): dropped */
  onDropped?: (fixes: WireFix[], detail: string) => void;
  /** errors of flushes the app did not await (the timer's); the fixes stay queued */
  onError?: (error: VicinoError) => void;
}

interface Segment {
  id: number;
  fixes: WireFix[];
  sealed: boolean;
}

interface Batch {
  ids: number[];
  fixes: WireFix[];
  /** the queue's generation when the batch was taken: a `clear()` since makes it moot */
  generation: number;
}

/** Runs an app callback; its failure is the app's and must not stop the queue: rethrown apart. */
function callBack(fn: () => void): void {
  try {
    fn();
  } catch (e) {
    setTimeout(() => { throw e; }, 0);
  }
}

function fixKey(f: WireFix): string {
  return `${f.ts}|${f.lat}|${f.lon}|${f.accuracy_m}|${f.speed_mps ?? ""}`;
}

function finite(name: string, v: unknown, min: number, max: number, exclusiveMin = false): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v > max || (exclusiveMin ? v <= min : v < min)) {
    throw new RangeError(`${name} must be a number ${exclusiveMin ? ">" : ">="} ${min} and <= ${max}: ${String(v)}`);
  }
  return v;
}

/** A fix as it goes on the wire, checked as the server checks it (a bad fix would block its batch). */
export function wireFix(fix: Fix): WireFix {
  const out: WireFix = {
    lat: finite("lat", fix.lat, -90, 90),
    lon: finite("lon", fix.lon, -180, 180),
    accuracy_m: finite("accuracy_m", fix.accuracy_m, 0, 100_000, true),
    ts: fixSeconds(fix.ts),
  };
  if (fix.speed_mps !== undefined && fix.speed_mps !== null) out.speed_mps = finite("speed_mps", fix.speed_mps, 0, 1000);
  return out;
}

/** Indices of the fixes a 422 names (`fixes[3].ts`); empty when it names none. */
export function refusedIndices(error: VicinoHttpError, size: number): Set<number> {
  const out = new Set<number>();
  for (const e of error.problem.errors ?? []) {
    const m = /^fixes\[(\d+)\]/.exec(e.field ?? "");
    if (m && Number(m[1]) < size) out.add(Number(m[1]));
  }
  return out;
}

export class FixQueue {
  private readonly storage: KeyValueStorage;
  private readonly key: string;
  readonly maxBatch: number;
  private readonly segmentSize: number;
  private readonly flushIntervalMs: number;
  private readonly flushAt: number;
  private readonly dedupWindow: number;
  private readonly options: FixQueueOptions;
  private segments: Segment[] = [];
  private nextId = 0;
  private readonly pendingKeys = new Map<string, number>();
  private readonly recentKeys = new Set<string>();
  private chain: Promise<unknown> = Promise.resolve();
  private generation = 0;
  private loading?: Promise<void>;
  private draining?: Promise<FlushResult>;
  private timer?: ReturnType<typeof setInterval>;
  /** set by a 401/403: the timer stops flushing until `resume()` (the fixes stay queued) */
  paused?: VicinoAuthError;

  constructor(private readonly sender: FixSender, options: FixQueueOptions = {}) {
    this.options = options;
    this.storage = options.storage ?? new MemoryStorage();
    this.key = options.key ?? "vicino.fixes";
    this.maxBatch = options.maxBatch ?? MAX_BATCH;
    if (!Number.isInteger(this.maxBatch) || this.maxBatch < 1 || this.maxBatch > MAX_BATCH) {
      throw new RangeError(`maxBatch must be an integer from 1 to ${MAX_BATCH}`);
    }
    this.segmentSize = Math.min(SEGMENT, this.maxBatch);
    this.flushIntervalMs = options.flushIntervalMs ?? 60_000;
    this.flushAt = options.flushAt ?? this.maxBatch;
    this.dedupWindow = options.dedupWindow ?? 2000;
  }

  /** Reads what a previous run left in storage (add and flush call it; call it early to warm up). */
  load(): Promise<void> {
    this.loading ??= this.locked(async () => {
      const raw = await this.storage.getItem(`${this.key}.index`);
      if (!raw) return;
      const index = JSON.parse(raw) as { v: number; segments: number[]; next: number };
      this.nextId = index.next;
      for (const id of index.segments) {
        const seg = await this.storage.getItem(this.segKey(id));
        if (seg === null) continue; // accepted, removed, and the app died before the index was rewritten
        const fixes = JSON.parse(seg) as WireFix[];
        this.segments.push({ id, fixes, sealed: true });
        for (const f of fixes) this.countPending(fixKey(f), 1);
      }
      const last = this.segments[this.segments.length - 1];
      if (last && last.fixes.length < this.segmentSize) last.sealed = false;
    });
    return this.loading;
  }

  /**
   * Queues fixes (one or many); resolves once they are in storage, with how many were new (exact
   * duplicates of a queued or recently sent fix are dropped). A bad fix throws a RangeError and
   * nothing of the call is queued.
   */
  async add(fixes: Fix | Fix[]): Promise<number> {
    const wire = (Array.isArray(fixes) ? fixes : [fixes]).map(wireFix);
    await this.load();
    const added = await this.locked(() => this.append(wire));
    if (this.timer !== undefined && !this.paused && this.count() >= this.flushAt) this.background();
    return added;
  }

  /** Fixes queued (sent ones still awaiting their answer included). */
  async pending(): Promise<number> {
    await this.load();
    return this.count();
  }

  /**
   * Sends everything queued, batch after batch, in order; resolves when the queue is empty (fixes
   * added meanwhile included). Rejects with the error that stopped it: a VicinoAuthError (the
   * queue pauses; `resume()` after a new token), or the last network/HTTP error once the retries
   * ran out or `deadline` (epoch ms; e.g. the OS's background time) came. Nothing is lost either way.
   * One flush runs at a time: a second call joins it.
   */
  flush(options: { deadline?: number } = {}): Promise<FlushResult> {
    this.draining ??= this.drain(options.deadline).finally(() => { this.draining = undefined; });
    return this.draining;
  }

  /** Flushes every `flushIntervalMs` and as soon as `flushAt` fixes are queued. */
  start(): void {
    if (this.timer !== undefined || this.flushIntervalMs <= 0) return;
    this.timer = setInterval(() => {
      if (!this.paused && this.count() > 0) this.background();
    }, this.flushIntervalMs);
    (this.timer as { unref?: () => void }).unref?.(); // Node: the timer alone does not keep a process alive
    void this.load().then(() => { if (this.count() > 0) this.background(); }, (e) => this.options.onError?.(e));
  }

  /** Stops the timer (a flush under way finishes). */
  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** After a VicinoAuthError: the app has a new token; flushing goes on. */
  resume(): void {
    this.paused = undefined;
    if (this.timer !== undefined && this.count() > 0) this.background();
  }

  /** Forgets every queued fix, in storage too (logout). */
  async clear(): Promise<void> {
    await this.load();
    await this.locked(async () => {
      for (const s of this.segments) await this.storage.removeItem(this.segKey(s.id));
      await this.storage.removeItem(`${this.key}.index`);
      this.segments = [];
      this.pendingKeys.clear();
      this.recentKeys.clear();
      this.generation++; // a batch in flight must not write its index back
    });
  }

  // --- internals -------------------------------------------------------------------------

  private background(): void {
    this.flush().catch((e: VicinoError) => callBack(() => this.options.onError?.(e)));
  }

  private count(): number {
    let n = 0;
    for (const s of this.segments) n += s.fixes.length;
    return n;
  }

  private segKey(id: number): string {
    return `${this.key}.seg.${id}`;
  }

  /** Runs `fn` after every earlier storage mutation: one writer at a time. */
  private locked<T>(fn: () => Promise<T> | T): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  private countPending(k: string, delta: number): void {
    const n = (this.pendingKeys.get(k) ?? 0) + delta;
    if (n > 0) this.pendingKeys.set(k, n);
    else this.pendingKeys.delete(k);
  }

  private async writeIndex(segments: Segment[], next: number): Promise<void> {
    await this.storage.setItem(`${this.key}.index`, JSON.stringify({ v: 1, segments: segments.map((s) => s.id), next }));
  }

  private async append(fixes: WireFix[]): Promise<number> {
    const keys: string[] = [];
    const fresh: WireFix[] = [];
    for (const f of fixes) {
      const k = fixKey(f);
      if (this.pendingKeys.has(k) || this.recentKeys.has(k) || keys.includes(k)) continue;
      keys.push(k);
      fresh.push(f);
    }
    if (!fresh.length) return 0;
    // build the new state aside, persist it (segments before the index that names them), then adopt it
    const last = this.segments[this.segments.length - 1];
    const open = last && !last.sealed && last.fixes.length < this.segmentSize ? { ...last, fixes: [...last.fixes] } : undefined;
    const created: Segment[] = [];
    let next = this.nextId;
    let target = open;
    for (const f of fresh) {
      if (!target || target.fixes.length >= this.segmentSize) {
        target = { id: next++, fixes: [], sealed: false };
        created.push(target);
      }
      target.fixes.push(f);
    }
    for (const s of open ? [open, ...created] : created) await this.storage.setItem(this.segKey(s.id), JSON.stringify(s.fixes));
    if (created.length) await this.writeIndex([...this.segments, ...created], next);
    if (open) last!.fixes = open.fixes;
    for (const s of created.slice(0, -1)) s.sealed = true;
    if (last && created.length) last.sealed = true;
    this.segments.push(...created);
    this.nextId = next;
    for (const k of keys) this.countPending(k, 1);
    return fresh.length;
  }

  private takeBatch(): Batch | undefined {
    const ids: number[] = [];
    const fixes: WireFix[] = [];
    for (const s of this.segments) {
      if (fixes.length + s.fixes.length > this.maxBatch) break;
      s.sealed = true; // in flight: adds go to a new segment
      ids.push(s.id);
      fixes.push(...s.fixes);
    }
    return ids.length ? { ids, fixes, generation: this.generation } : undefined;
  }

  private async remove(batch: Batch): Promise<void> {
    if (batch.generation !== this.generation) return;
    const gone = new Set(batch.ids);
    for (const id of batch.ids) await this.storage.removeItem(this.segKey(id));
    const kept = this.segments.filter((s) => !gone.has(s.id));
    await this.writeIndex(kept, this.nextId);
    this.segments = kept;
    for (const f of batch.fixes) {
      const k = fixKey(f);
      this.countPending(k, -1);
      this.recentKeys.delete(k);
      this.recentKeys.add(k);
    }
    for (const k of this.recentKeys) {
      if (this.recentKeys.size <= this.dedupWindow) break;
      this.recentKeys.delete(k);
    }
  }

  /** Removes the fixes of `batch` at `indices` (refused by the server) from their segments. */
  private async drop(batch: Batch, indices: Set<number>): Promise<WireFix[]> {
    const dropped: WireFix[] = [];
    if (batch.generation !== this.generation) return dropped;
    let i = 0;
    const emptied = new Set<number>();
    for (const id of batch.ids) {
      const seg = this.segments.find((s) => s.id === id)!;
      const kept = seg.fixes.filter((f) => {
        const bad = indices.has(i++);
        if (bad) dropped.push(f);
        return !bad;
      });
      if (kept.length === seg.fixes.length) continue;
      if (kept.length) await this.storage.setItem(this.segKey(id), JSON.stringify(kept));
      else {
        await this.storage.removeItem(this.segKey(id));
        emptied.add(id);
      }
      seg.fixes = kept;
    }
    if (emptied.size) {
      this.segments = this.segments.filter((s) => !emptied.has(s.id));
      await this.writeIndex(this.segments, this.nextId);
    }
    for (const f of dropped) this.countPending(fixKey(f), -1);
    return dropped;
  }

  private async drain(deadline?: number): Promise<FlushResult> {
    await this.load();
    const out: FlushResult = { batches: 0, accepted: 0, ignored: 0, pending: 0 };
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const batch = await this.locked(() => this.takeBatch());
      if (!batch) break;
      let result: LocationResultOut;
      try {
        result = await this.sender.send(batch.fixes, deadline);
      } catch (e) {
        if (e instanceof VicinoAuthError) this.paused = e;
        if (e instanceof VicinoHttpError && e.status === 422) {
          const refused = refusedIndices(e, batch.fixes.length);
          if (refused.size) { // those fixes can never be accepted; the others are sent again
            const dropped = await this.locked(() => this.drop(batch, refused));
            callBack(() => this.options.onDropped?.(dropped, (e as VicinoHttpError).problem.detail ?? "refused"));
            continue;
          }
        }
        throw e;
      }
      await this.locked(() => this.remove(batch));
      out.batches++;
      out.accepted += result.accepted;
      out.ignored += result.ignored.length;
      callBack(() => this.options.onBatch?.({ fixes: batch.fixes, result }));
    }
    out.pending = this.count();
    return out;
  }
}
