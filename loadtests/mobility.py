"""How the simulated phones move, and the batches of fixes their SDK reports. Pure: no locust,
no HTTP; every random choice comes from the `random.Random` a phone is given (seeded per user).

Three kinds of movement, each a timeline of segments in *simulated* time (epoch seconds):
- `TrajectoryMotion`: real Go!Track phone traces (Cruz, Macedo & Guimarães, UCI ML Repository
  dataset 354, CC BY 4.0), recorded in Aracaju (Brazil), translated rigidly onto Milano so that
  one point of the trace lies on a demo store: the trace passes by and into that store, where
  the driver stops most of the time (longer than the store's dwell threshold, or not), then
  drives on. One trace after another, with the phone off in between.
- `WalkerMotion`: a seeded random walk from store to store at walking pace, staying a while.
- `StanderMotion`: a person standing still just inside or just outside a fence, the GPS
  jittering with 10-40 m accuracy, for a long stint; then somewhere else.

`Sdk` turns a motion into the requests a mobile SDK sends: a batch of fixes per request (the
first one a backlog of the last minutes), a fix every ~1.5 s while moving (5 fixes: ~7.5 s of
simulated time per request) and every 20-35 s while still (minutes per request). Simulated
time starts minutes behind the wall clock and runs faster than it, never past it, so that a
dwell of several minutes happens within a short run; once it has caught up, batches carry real
time (a phone keeps its request pace; its fixes get closer together)."""
from __future__ import annotations

import bisect
import csv
import gzip
import math
import os
import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

EARTH_R = 6_371_008.8
ROOT = Path(__file__).resolve().parents[1]
GOTRACK_DIR = Path(os.environ.get("VICINO_GOTRACK_DIR",
                                  ROOT.parent / "shared" / "datasets" / "gotrack-gps-trajectories"))
GOTRACK_POINTS = "go_track_trackspoints.csv.gz"
# The first 30 trips of at least 30 fixes, lines unchanged (tests/fixtures/ATTRIBUTION.md): what a
# clone without the shared data sets (CI, a fresh machine) replays when VICINO_GOTRACK_DIR is unset.
GOTRACK_SLICE = ROOT / "tests" / "fixtures" / "gotrack_trackspoints_slice.csv.gz"

MOVING_FIX_S = 1.5             # while moving (positions between Go!Track's ~5 s points are interpolated)
STILL_FIX_S = (20.0, 35.0)     # what a phone's fused location gives when still
MAX_TRACK_GAP_S = 30.0         # longer pauses in a trace are shortened to this


# --- geodesy (local tangent plane: exact enough over a few km) ---------------------------------

def offset(lat: float, lon: float, east_m: float, north_m: float) -> tuple[float, float]:
    """The point `east_m`, `north_m` metres from (lat, lon)."""
    dlat = math.degrees(north_m / EARTH_R)
    dlon = math.degrees(east_m / (EARTH_R * math.cos(math.radians(lat))))
    return lat + dlat, lon + dlon


def to_local(lat0: float, lon0: float, lat: float, lon: float) -> tuple[float, float]:
    """(east, north) metres of (lat, lon) from (lat0, lon0)."""
    north = math.radians(lat - lat0) * EARTH_R
    east = math.radians(lon - lon0) * EARTH_R * math.cos(math.radians(lat0))
    return east, north


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_R * math.asin(min(1.0, math.sqrt(a)))


# --- data ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Track:
    """One Go!Track trip: points (lat, lon) and their times in seconds from the first point."""
    track_id: str
    lats: tuple[float, ...]
    lons: tuple[float, ...]
    times: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.times)


@dataclass(frozen=True, slots=True)
class Store:
    """A circular demo store (a fuel station), where phones go."""
    store_id: str
    lat: float
    lon: float
    radius_m: float
    dwell_s: float


def gotrack_points_path(directory: Path = GOTRACK_DIR) -> Path:
    """The whole data set when it is there; the repository's slice when it is not and
    VICINO_GOTRACK_DIR was not set (a directory named explicitly must hold the data)."""
    path = Path(directory) / GOTRACK_POINTS
    if path.exists():
        return path
    if "VICINO_GOTRACK_DIR" not in os.environ and GOTRACK_SLICE.exists():
        return GOTRACK_SLICE
    raise FileNotFoundError(f"{path}: the Go!Track data set (see loadtests/README.md); "
                            "set VICINO_GOTRACK_DIR to where it lives")


def load_tracks(path: Path | None = None, min_points: int = 30) -> list[Track]:
    """The Go!Track trips of the points file `path` (default: gotrack_points_path()) with at least
    `min_points` fixes, in track id order. Repeated timestamps are dropped and pauses longer than
    MAX_TRACK_GAP_S shortened to it."""
    path = path or gotrack_points_path()
    raw: dict[str, list[tuple[float, float, float]]] = {}
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            ts = datetime.fromisoformat(row["time"]).timestamp()
            raw.setdefault(row["track_id"], []).append((float(row["latitude"]), float(row["longitude"]), ts))
    tracks = []
    for tid in sorted(raw, key=lambda s: int(s) if s.isdigit() else s):
        pts = sorted(raw[tid], key=lambda p: p[2])
        lats, lons, times = [], [], []
        t_rel = 0.0
        for i, (lat, lon, ts) in enumerate(pts):
            if i:
                dt = ts - pts[i - 1][2]
                if dt <= 0:
                    continue
                t_rel += min(dt, MAX_TRACK_GAP_S)
            lats.append(lat)
            lons.append(lon)
            times.append(t_rel)
        if len(times) >= min_points:
            tracks.append(Track(tid, tuple(lats), tuple(lons), tuple(times)))
    return tracks


def translate(track: Track, index: int, lat: float, lon: float) -> list[tuple[float, float]]:
    """The track moved rigidly (no rotation, no scaling: distances and bearings are kept on the
    local tangent plane) so that its point `index` lies on (lat, lon)."""
    lat0, lon0 = track.lats[index], track.lons[index]
    return [offset(lat, lon, *to_local(lat0, lon0, a, b)) for a, b in zip(track.lats, track.lons)]


def stores_from_nearby(found: list[dict], default_dwell_s: float) -> list[Store]:
    """The circular stores of a `GET /v1/stores?lat=&lon=` answer (districts are polygons: left out)."""
    out = []
    for s in found:
        feature = s.get("feature") or {}
        geom = feature.get("geometry") or {}
        props = feature.get("properties") or {}
        if geom.get("type") != "Point" or not props.get("radius_m") or props.get("enabled") is False:
            continue
        lon, lat = geom["coordinates"][:2]
        dwell = props.get("dwell_s")
        out.append(Store(s["store_id"], float(lat), float(lon), float(props["radius_m"]),
                         float(dwell) if dwell else default_dwell_s))
    return out


# --- motion: a timeline of segments ----------------------------------------------------------------

@dataclass(slots=True)
class Segment:
    t0: float
    t1: float
    lat0: float
    lon0: float
    lat1: float
    lon1: float
    kind: str            # move | still | off (phone off: no fixes)
    accuracy: tuple[float, float] = (5.0, 12.0)

    def at(self, t: float) -> tuple[float, float]:
        if self.t1 <= self.t0:
            return self.lat1, self.lon1
        f = min(1.0, max(0.0, (t - self.t0) / (self.t1 - self.t0)))
        return self.lat0 + (self.lat1 - self.lat0) * f, self.lon0 + (self.lon1 - self.lon0) * f


@dataclass
class Motion:
    """Where the phone is at a simulated time; subclasses append segments as time goes on."""
    rng: random.Random
    stores: list[Store]
    t_start: float
    segments: list[Segment] = field(default_factory=list)
    _ends: list[float] = field(default_factory=list)
    stops: int = 0                       # planned stays at a store longer than its dwell threshold
    now: float = 0.0                     # the wall clock, as the SDK last saw it

    kind = "motion"

    def _add(self, seg: Segment) -> None:
        self.segments.append(seg)
        self._ends.append(seg.t1)

    @property
    def t_end(self) -> float:
        return self._ends[-1] if self._ends else self.t_start

    def _last_point(self) -> tuple[float, float] | None:
        if not self.segments:
            return None
        s = self.segments[-1]
        return s.lat1, s.lon1

    def extend(self) -> None:
        raise NotImplementedError

    def segment_at(self, t: float) -> Segment:
        while t >= self.t_end:
            n = len(self.segments)
            self.extend()
            if len(self.segments) == n:
                raise RuntimeError(f"{type(self).__name__}.extend added nothing")
        self._forget_before(t)
        return self.segments[bisect.bisect_right(self._ends, t)]

    def _forget_before(self, t: float) -> None:
        """Keep memory flat over long runs: segments wholly in the past go."""
        if len(self.segments) > 64:
            cut = bisect.bisect_right(self._ends, t) - 1
            if cut > 0:
                del self.segments[:cut]
                del self._ends[:cut]

    def pick_store(self, near: tuple[float, float] | None = None, within_m: float = 2500.0) -> Store:
        if near is not None:
            close = [s for s in self.stores if distance_m(near[0], near[1], s.lat, s.lon) <= within_m]
            if len(close) > 1:
                return self.rng.choice(close)
        return self.rng.choice(self.stores)

    def _stay(self, t: float, lat: float, lon: float, duration: float, accuracy: tuple[float, float]) -> float:
        self._add(Segment(t, t + duration, lat, lon, lat, lon, "still", accuracy))
        return t + duration

    def _off(self, t: float, duration: float) -> float:
        """The phone sends nothing for a while, as long as simulated time is far enough behind the
        wall clock to skip it (else the phone reappears at once: requests must go on at their pace)."""
        duration = min(duration, max(0.0, self.now - t - 60.0))
        if duration <= 0:
            return t
        last = self._last_point() or (self.stores[0].lat, self.stores[0].lon)
        self._add(Segment(t, t + duration, *last, *last, "off"))
        return t + duration


class TrajectoryMotion(Motion):
    """Real Go!Track trips, each translated so that one of its points lies on a demo store."""

    kind = "trajectory"

    def __init__(self, rng: random.Random, stores: list[Store], t_start: float, tracks: list[Track],
                 stop_share: float = 0.7) -> None:
        super().__init__(rng, stores, t_start)
        self.tracks = tracks
        self.stop_share = stop_share
        self.trips = 0

    def extend(self) -> None:
        rng = self.rng
        t = self.t_end
        if self.trips:
            t = self._off(t, rng.uniform(60, 300))  # parked, phone asleep, between two trips
        track = rng.choice(self.tracks)
        store = self.pick_store()
        n = len(track)
        k = rng.randint(n // 4, (3 * n) // 4)             # the point that lies on the store
        back = rng.randint(3, 25) if self.trips == 0 else rng.randint(20, 80)
        start, end = max(0, k - back), min(n - 1, k + rng.randint(10, 60))
        pts = translate(track, k, store.lat, store.lon)
        acc = (4.0, 12.0)

        def drive(a: int, b: int, t: float) -> float:
            base = t - track.times[a]
            for j in range(a, b):
                self._add(Segment(base + track.times[j], base + track.times[j + 1],
                                  *pts[j], *pts[j + 1], "move", acc))
            return base + track.times[b]

        t = drive(start, k, t)
        if rng.random() < self.stop_share:
            # pull in at the pump: a few metres from the point, longer than the dwell threshold or not
            stay = store.dwell_s * rng.uniform(0.5, 1.8)
            self.stops += stay >= store.dwell_s
            t = self._stay(t, *offset(store.lat, store.lon, rng.uniform(-0.3, 0.3) * store.radius_m,
                                      rng.uniform(-0.3, 0.3) * store.radius_m), stay, (5.0, 20.0))
            pts[k] = (self.segments[-1].lat1, self.segments[-1].lon1)
        t = drive(k, end, t)
        self.trips += 1


class WalkerMotion(Motion):
    """Store to store on foot, slightly meandering, staying a while at each."""

    kind = "walker"

    def extend(self) -> None:
        rng = self.rng
        here = self._last_point()
        if here is None:
            store = self.pick_store()
            here = offset(store.lat, store.lon, rng.uniform(-0.5, 0.5) * store.radius_m,
                          rng.uniform(-0.5, 0.5) * store.radius_m)
            stay = store.dwell_s * rng.uniform(0.3, 1.6)
            self.stops += stay >= store.dwell_s
            self._stay(self.t_start, *here, stay, (5.0, 25.0))
            return
        t = self.t_end
        target = self.pick_store(near=here)
        dest = offset(target.lat, target.lon, rng.uniform(-0.5, 0.5) * target.radius_m,
                      rng.uniform(-0.5, 0.5) * target.radius_m)
        speed = rng.uniform(1.1, 1.5)
        dist = distance_m(*here, *dest)
        legs = max(1, int(dist // 120))
        prev = here
        for i in range(1, legs + 1):
            f = i / legs
            lat, lon = here[0] + (dest[0] - here[0]) * f, here[1] + (dest[1] - here[1]) * f
            if i < legs:  # a street grid is not a straight line
                lat, lon = offset(lat, lon, rng.gauss(0, 15), rng.gauss(0, 15))
            d = distance_m(*prev, lat, lon)
            self._add(Segment(t, t + d / speed, *prev, lat, lon, "move", (5.0, 15.0)))
            t += d / speed
            prev = (lat, lon)
        stay = target.dwell_s * rng.uniform(0.3, 1.6)
        self.stops += stay >= target.dwell_s
        self._stay(t, *prev, stay, (5.0, 25.0))


class StanderMotion(Motion):
    """Standing still beside a fence, just inside or just outside its radius, GPS jittering."""

    kind = "stander"

    def __init__(self, rng: random.Random, stores: list[Store], t_start: float, inside_share: float = 0.5) -> None:
        super().__init__(rng, stores, t_start)
        self.inside_share = inside_share

    def extend(self) -> None:
        rng = self.rng
        t = self.t_end
        if self.segments:
            t = self._off(t, rng.uniform(60, 300))
        store = self.pick_store()
        inside = rng.random() < self.inside_share
        d = max(0.0, store.radius_m - rng.uniform(5, 25)) if inside else store.radius_m + rng.uniform(10, 45)
        bearing = rng.uniform(0, 2 * math.pi)
        spot = offset(store.lat, store.lon, d * math.sin(bearing), d * math.cos(bearing))
        stay = rng.uniform(400, 1200)
        self.stops += inside
        self._stay(t, *spot, stay, (10.0, 40.0))


# --- the SDK: batches of fixes --------------------------------------------------------------------

class Sdk:
    """A phone's location SDK: fixes of a motion, in batches, never ahead of the wall clock."""

    def __init__(self, motion: Motion, batch: int = 5, backlog: int = 12) -> None:
        self.motion = motion
        self.rng = motion.rng
        self.batch = batch
        self.backlog = backlog
        self.t = motion.t_start          # the last fix's time
        self.sent = 0

    def _next_time(self, t: float) -> float:
        seg = self.motion.segment_at(t)
        while seg.kind == "off":
            t = seg.t1
            seg = self.motion.segment_at(t)
        step = MOVING_FIX_S * self.rng.uniform(0.7, 1.3) if seg.kind == "move" else self.rng.uniform(*STILL_FIX_S)
        return t + step

    def fix_at(self, t: float) -> dict:
        seg = self.motion.segment_at(t)
        lat, lon = seg.at(t)
        acc = self.rng.uniform(*seg.accuracy)
        sigma = acc / 2.0  # about 68% of fixes within the reported accuracy (two axes)
        lat, lon = offset(lat, lon, self.rng.gauss(0, sigma), self.rng.gauss(0, sigma))
        return {"lat": round(lat, 7), "lon": round(lon, 7), "accuracy_m": round(acc, 1), "ts": round(t, 3)}

    def next_batch(self, now: float) -> list[dict]:
        """The fixes of the next request: `backlog` of them the first time (the minutes before the
        app could send), `batch` after; at most up to `now` (less a margin)."""
        n = self.backlog if self.sent == 0 else self.batch
        cap = now - 0.2
        self.motion.now = now
        times: list[float] = []
        t = self.t
        while len(times) < n:
            t = self._next_time(t)
            if t > cap:
                break
            times.append(t)
        if len(times) < n:
            # caught up with the wall clock: what real time allows, spread evenly
            span = cap - self.t
            if span <= 0.05:
                return []
            times = [self.t + span * (i + 1) / n for i in range(n)]
            times = [x for x in times if self.motion.segment_at(x).kind != "off"] or [cap]
        self.t = times[-1]
        self.sent += 1
        return [self.fix_at(x) for x in times]

    def lag_s(self, now: float) -> float:
        return now - self.t
