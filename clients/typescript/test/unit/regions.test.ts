import assert from "node:assert/strict";
import { test } from "node:test";

import { MemoryStorage, RegionSync, distanceM } from "../../src/index.js";

test("distance: a degree of latitude is about 111 km", () => {
  assert.ok(Math.abs(distanceM(45, 9, 46, 9) - 111_195) < 100);
  assert.equal(distanceM(45, 9, 45, 9), 0);
});

test("asks again only outside the resync circle or when stale; the set survives a relaunch", async () => {
  let now = 0;
  const asked: [number, number, number][] = [];
  const storage = new MemoryStorage();
  const changes: number[] = [];
  const fetchRegions = async (lat: number, lon: number, limit: number) => {
    asked.push([lat, lon, limit]);
    return { device_id: "d1", lat, lon, resync_radius_m: 1000,
      regions: [{ store_id: "s1", lat: 45.001, lon: 9, radius_m: 60, distance_m: 51 }] };
  };
  const sync = new RegionSync(fetchRegions, { storage, now: () => now, onChange: (s) => { changes.push(s.fetchedAt); } });
  assert.ok(await sync.needsSync(45, 9));
  const set = await sync.update(45, 9);
  assert.equal(set?.regions[0].store_id, "s1");
  assert.equal(await sync.update(45.005, 9), undefined, "556 m from the centre: inside the 1 km circle");
  assert.ok(await sync.update(45.01, 9), "1.1 km away: outside");
  assert.deepEqual(asked.map((a) => a[2]), [20, 20]);
  const relaunched = new RegionSync(fetchRegions, { storage, now: () => now, limit: 100 });
  assert.equal((await relaunched.current())?.lat, 45.01);
  assert.equal(await relaunched.update(45.01, 9), undefined);
  now += 86_400_000;
  assert.ok(await relaunched.update(45.01, 9), "a day old");
  assert.equal(asked[2][2], 100);
  await relaunched.clear();
  assert.equal(await new RegionSync(fetchRegions, { storage }).current(), undefined);
  assert.equal(changes.length, 2);
});
