// Region sync: the nearest stores' fences as circles for the OS's region monitoring (iOS watches
// at most 20 regions per app, Android 100 geofences), and the circle around the point of the
// last sync that the phone may roam inside before it needs to ask again. Kept in storage, so a
// relaunched app knows what the OS is watching and when to ask again.
import type { RegionOut, RegionsOut } from "./generated/types.js";
import { MemoryStorage, type KeyValueStorage } from "./storage.js";

/** One store's fence as a circle that encloses it: `store_id`, `lat`, `lon`, `radius_m`, `distance_m`. */
export type Region = RegionOut;

/** The server's answer: the regions, nearest first, and the resync circle (centre `lat`, `lon`). */
export type RegionsAnswer = RegionsOut;

export interface RegionSet extends RegionsOut {
  /** epoch ms */
  fetchedAt: number;
}

export interface RegionSyncOptions {
  storage?: KeyValueStorage;
  key?: string;
  /** regions to ask for: 20 (iOS's limit per app) by default; up to 100 (Android) */
  limit?: number;
  /** ask again after this long even without moving (stores open and close; default 24 h) */
  maxAgeMs?: number;
  /** the new set, to hand to the OS (stop monitoring the old regions, monitor these) */
  onChange?: (set: RegionSet) => void | Promise<void>;
  now?: () => number;
}

const EARTH_RADIUS_M = 6_371_008.8;

/** Great-circle distance in metres (haversine). */
export function distanceM(aLat: number, aLon: number, bLat: number, bLon: number): number {
  const rad = Math.PI / 180;
  const dLat = (bLat - aLat) * rad;
  const dLon = (bLon - aLon) * rad;
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(aLat * rad) * Math.cos(bLat * rad) * Math.sin(dLon / 2) ** 2;
  return 2 * EARTH_RADIUS_M * Math.asin(Math.min(1, Math.sqrt(h)));
}

export class RegionSync {
  private readonly storage: KeyValueStorage;
  private readonly key: string;
  readonly limit: number;
  private readonly maxAgeMs: number;
  private readonly now: () => number;
  private set?: RegionSet;
  private loading?: Promise<void>;
  private syncing?: Promise<RegionSet>;

  constructor(private readonly fetchRegions: (lat: number, lon: number, limit: number) => Promise<RegionsAnswer>,
              private readonly options: RegionSyncOptions = {}) {
    this.storage = options.storage ?? new MemoryStorage();
    this.key = options.key ?? "vicino.regions";
    this.limit = options.limit ?? 20;
    this.maxAgeMs = options.maxAgeMs ?? 86_400_000;
    this.now = options.now ?? Date.now;
  }

  /** The set last synced (also from a previous run), if any. */
  async current(): Promise<RegionSet | undefined> {
    this.loading ??= this.storage.getItem(this.key).then((raw) => {
      if (raw && !this.set) this.set = JSON.parse(raw) as RegionSet;
    });
    await this.loading;
    return this.set;
  }

  /** Whether the phone at (lat, lon) should ask again: no set yet, outside the resync circle, or stale. */
  async needsSync(lat: number, lon: number): Promise<boolean> {
    const set = await this.current();
    return !set || this.now() - set.fetchedAt >= this.maxAgeMs ||
      distanceM(set.lat, set.lon, lat, lon) >= set.resync_radius_m;
  }

  /**
   * Call on every location the OS hands the app (a significant change, a region exit): asks the
   * server only when `needsSync`; resolves with the new set when it asked, else undefined.
   */
  async update(lat: number, lon: number): Promise<RegionSet | undefined> {
    return (await this.needsSync(lat, lon)) ? this.sync(lat, lon) : undefined;
  }

  /** Asks the server now (one request at a time) and keeps the answer. */
  sync(lat: number, lon: number): Promise<RegionSet> {
    this.syncing ??= (async () => {
      const answer = await this.fetchRegions(lat, lon, this.limit);
      const set: RegionSet = { ...answer, fetchedAt: this.now() };
      await this.storage.setItem(this.key, JSON.stringify(set));
      this.set = set;
      await this.options.onChange?.(set);
      return set;
    })().finally(() => { this.syncing = undefined; });
    return this.syncing;
  }

  /** Forgets the set (logout). */
  async clear(): Promise<void> {
    await this.current();
    this.set = undefined;
    await this.storage.removeItem(this.key);
  }
}
