"""The load test's mobility model (loadtests/mobility.py): pure and seeded, so it is checked here
rather than through a load run. Tracks come from the repository's Go!Track slice
(tests/fixtures/ATTRIBUTION.md), which is also what a clone without the shared data sets replays."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from loadtests import mobility
from loadtests.mobility import GOTRACK_SLICE, Sdk, Store, TrajectoryMotion, distance_m, load_tracks, translate

STORES = [Store("s1", 45.4642, 9.1900, 60.0, 120.0), Store("s2", 45.4700, 9.2000, 40.0, 90.0),
          Store("s3", 45.4600, 9.1800, 80.0, 150.0)]


@pytest.fixture(scope="module")
def tracks() -> list[mobility.Track]:
    return load_tracks(GOTRACK_SLICE)


def test_a_clone_without_the_data_set_replays_the_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VICINO_GOTRACK_DIR", raising=False)
    assert mobility.gotrack_points_path(Path("/nonexistent-gotrack-dir")) == GOTRACK_SLICE


def test_a_directory_named_explicitly_must_hold_the_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VICINO_GOTRACK_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="VICINO_GOTRACK_DIR"):
        mobility.gotrack_points_path(tmp_path)


def test_slice_tracks_are_whole_ordered_trips(tracks: list[mobility.Track]) -> None:
    assert len(tracks) == 30                      # the slice's 30 trips, each of >= 30 fixes
    assert [t.track_id for t in tracks] == sorted((t.track_id for t in tracks), key=int)
    for t in tracks:
        assert len(t) >= 30 and t.times[0] == 0.0
        gaps = [b - a for a, b in zip(t.times, t.times[1:])]
        assert all(0 < g <= mobility.MAX_TRACK_GAP_S for g in gaps), t.track_id
        # real Aracaju (Brazil) coordinates before translation
        assert all(-12 < lat < -9 for lat in t.lats) and all(-39 < lon < -36 for lon in t.lons)


def test_translation_is_rigid_and_lands_on_the_store(tracks: list[mobility.Track]) -> None:
    track = max(tracks, key=len)
    k = len(track) // 2
    pts = translate(track, k, STORES[0].lat, STORES[0].lon)
    assert distance_m(*pts[k], STORES[0].lat, STORES[0].lon) < 0.01
    for j in (0, k // 2, len(track) - 1):
        before = distance_m(track.lats[k], track.lons[k], track.lats[j], track.lons[j])
        after = distance_m(*pts[k], *pts[j])
        assert after == pytest.approx(before, rel=1e-3, abs=0.5)


def _batches(seed: int, tracks: list[mobility.Track], seconds: float = 1800.0) -> list[tuple[float, list[dict]]]:
    """(request time, fixes) of one phone asking every 2 s."""
    rng = random.Random(seed)
    sdk = Sdk(TrajectoryMotion(rng, STORES, 1_000_000.0, tracks))
    out, now = [], 1_000_000.0
    while now < 1_000_000.0 + seconds:
        now += 2.0
        batch = sdk.next_batch(now)
        if batch:
            out.append((now, batch))
    return out


def test_the_sdk_sends_ordered_batches_never_ahead_of_the_clock(tracks: list[mobility.Track]) -> None:
    batches = _batches(7, tracks)
    assert len(batches[0][1]) == 12 and all(1 <= len(b) <= 5 for _, b in batches[1:])  # backlog, then batches
    fixes = [f for _, b in batches for f in b]
    times = [f["ts"] for f in fixes]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert all(b[-1]["ts"] <= now for now, b in batches)
    assert all(0 < f["accuracy_m"] <= 20.0 for f in fixes)
    # a phone on a trip translated onto Milan passes by the demo stores
    assert min(distance_m(f["lat"], f["lon"], s.lat, s.lon) for f in fixes for s in STORES) < 100.0


def test_the_same_seed_replays_the_same_phone(tracks: list[mobility.Track]) -> None:
    assert _batches(11, tracks, 600.0) == _batches(11, tracks, 600.0)
    assert _batches(11, tracks, 600.0) != _batches(12, tracks, 600.0)
