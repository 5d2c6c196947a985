"""The visit state machine, driven directly with real fences in a real StoreIndex.

Properties (hypothesis) for what must hold whatever the input; scenarios for the rules: the
hysteresis that keeps a phone on a fence edge from flapping, the three exit reasons, ignored
fixes, stores that accept no visits, dwell overrides and close_all.
"""
from __future__ import annotations

import itertools
import json
import math
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vicino.services.geo.domain.geojson_codec import store_from_feature
from vicino.services.geo.domain.store_index import StoreIndex
from vicino.services.geo.domain.stores import Store
from vicino.services.geo.domain.transitions import (DeviceState, Fix, Ignored, TransitionPolicy, close_all,
                                             Visit, evaluate, expire_silent)

M_PER_DEG = 6_371_008.8 * math.pi / 180.0
LAT0, LON0 = 45.4642, 9.1900  # Milano, Duomo
ROME = ZoneInfo("Europe/Rome")
POLICY = TransitionPolicy()  # dwell 300 s, exit buffer 30 m, exit timeout 900 s, max accuracy 200 m
T0 = datetime(2024, 6, 3, 10, 0, tzinfo=ROME).timestamp()  # a Monday morning


def at(dx_m: float, dy_m: float, lat0: float = LAT0, lon0: float = LON0) -> tuple[float, float]:
    """The point dx_m east and dy_m north of (lat0, lon0)."""
    return lat0 + dy_m / M_PER_DEG, lon0 + dx_m / (M_PER_DEG * math.cos(math.radians(lat0)))


def minter():
    n = itertools.count(1)
    return lambda: f"visit-{next(n)}"


def circle(sid, dx=0.0, dy=0.0, radius_m=100.0, **props) -> Store:
    lat, lon = at(dx, dy)
    store, _ = store_from_feature({"type": "Feature", "id": sid, "geometry": {"type": "Point", "coordinates": [lon, lat]},
                                   "properties": {"radius_m": radius_m, **props}})
    return store


def square(sid, dx=0.0, dy=0.0, half_m=100.0, **props) -> Store:
    ring = [list(reversed(at(dx + sx * half_m, dy + sy * half_m))) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1))]
    store, _ = store_from_feature({"type": "Feature", "id": sid, "geometry": {"type": "Polygon", "coordinates": [ring]},
                                   "properties": dict(props)})
    return store


def fix_at(dx, dy, ts, acc=10.0, index=0) -> Fix:
    lat, lon = at(dx, dy)
    return Fix(lat, lon, acc, ts, index)


def run(index, fixes, policy=POLICY, state=None, mint=None):
    state = state if state is not None else DeviceState()
    return evaluate(state, fixes, index, policy, mint or minter())


def kinds(transitions):
    return [(t.type, t.store_id) for t in transitions]


# ---------------------------------------------------------------------------------------------
# properties


STATIONARY_STORES = [circle("c1", radius_m=80), square("p1", dx=600, half_m=60)]
STATIONARY_INDEX = StoreIndex(STATIONARY_STORES)


@settings(max_examples=200, deadline=None)
@given(which=st.sampled_from(["c1", "p1"]),
       where=st.tuples(st.floats(-0.99, 0.99), st.floats(-0.99, 0.99)),
       n=st.integers(1, 300),
       gaps=st.lists(st.floats(0.001, 5000.0, allow_nan=False), min_size=299, max_size=299),
       acc=st.floats(0.0, 200.0),
       dwell_s=st.floats(1.0, 7200.0),
       splits=st.lists(st.integers(0, 300), max_size=5))
def test_a_phone_that_never_moves_enters_once_and_never_leaves(which, where, n, gaps, acc, dwell_s, splits):
    store = STATIONARY_INDEX.get(which)
    if which == "c1":  # a point of the square inscribed in the disk
        lat, lon = at(where[0] * 80 / math.sqrt(2), where[1] * 80 / math.sqrt(2))
    else:
        lat, lon = at(600 + where[0] * 60, where[1] * 60)
    assert [s.store_id for s in STATIONARY_INDEX.containing(lat, lon)] == [which]
    ts = T0 + np.concatenate([[0.0], np.cumsum(gaps[: n - 1])])
    assert np.all(np.diff(ts) > 0)
    fixes = [Fix(lat, lon, acc, float(t), i) for i, t in enumerate(ts)]
    policy = TransitionPolicy(dwell_s=dwell_s)
    state, mint, events = DeviceState(), minter(), []
    bounds = sorted({0, n, *[min(b, n) for b in splits]})
    for a, b in zip(bounds, bounds[1:]):
        out = evaluate(state, fixes[a:b], STATIONARY_INDEX, policy, mint)
        assert out.ignored == [] and out.accepted == b - a
        events += out.transitions
    types = [t.type for t in events]
    assert types.count("enter") == 1 and types[0] == "enter"
    assert events[0].ts == ts[0]
    assert "exit" not in types
    elapsed = float(ts[-1] - ts[0])
    assert types.count("dwell") == (1 if elapsed >= dwell_s else 0)
    for t in events:
        assert t.store_id == which and t.visit_id == events[0].visit_id
        if t.type == "dwell":
            assert t.ts - ts[0] >= dwell_s and t.dwell_s == t.ts - ts[0]
            # the first fix that reached dwell_s, not a later one
            assert t.ts == min(x for x in ts if x - ts[0] >= dwell_s)
    assert list(state.visits) == [which]


WALK_STORES = [
    circle("a", radius_m=60),
    circle("b", dx=70, radius_m=50, dwell_s=120),  # overlaps a
    square("p", dx=-40, dy=180, half_m=70, dwell_s=900),
    circle("shop", dx=250, dy=-150, radius_m=40, opening_hours="Mo-Fr 09:00-18:00"),
    circle("off", dx=-200, dy=-120, radius_m=60, enabled=False),
]

_stroll = st.tuples(st.floats(-12, 12), st.floats(-12, 12))  # standing about, GPS noise
step = st.one_of(_stroll, _stroll, _stroll,  # (weights: one_of picks its branches evenly)
                 st.tuples(st.floats(-40, 40), st.floats(-40, 40)),  # walking
                 st.tuples(st.floats(-400, 400), st.floats(-400, 400)))  # a jump (bad fix, a drive)
accuracy = st.one_of(st.floats(1, 60), st.floats(1, 200), st.floats(200.001, 3000))
gap = st.one_of(st.floats(0.5, 120), st.floats(120, 900), st.floats(900, 4 * 3600), st.just(900.0))


@st.composite
def walks(draw):
    n = draw(st.integers(1, 150))
    steps = draw(st.lists(step, min_size=n, max_size=n))
    accs = draw(st.lists(accuracy, min_size=n, max_size=n))
    gaps = draw(st.lists(gap, min_size=n, max_size=n))
    cuts = sorted(set(draw(st.lists(st.integers(0, n), max_size=20))) | {0, n})
    # per batch: shuffled? serialised state? a resent old fix? the store list changed?
    nb = len(cuts) - 1
    shuffles = draw(st.lists(st.randoms(use_true_random=False), min_size=nb, max_size=nb))
    serialise = draw(st.lists(st.booleans(), min_size=nb, max_size=nb))
    resend = draw(st.lists(st.one_of(st.none(), st.integers(0, n - 1)), min_size=nb, max_size=nb))
    removed = draw(st.lists(st.one_of(st.none(), st.sampled_from([s.store_id for s in WALK_STORES])),
                            min_size=nb, max_size=nb))
    start = draw(st.sampled_from([(0.0, 0.0), (70.0, 0.0), (-40.0, 180.0), (250.0, -150.0), (-200.0, -120.0)]))
    t_start = draw(st.sampled_from([T0, datetime(2024, 6, 2, 12, 0, tzinfo=ROME).timestamp(),
                                    datetime(2024, 6, 3, 17, 40, tzinfo=ROME).timestamp()]))
    return n, steps, accs, gaps, cuts, shuffles, serialise, resend, removed, start, t_start


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(walk=walks())
def test_random_walks_keep_visits_well_formed(walk):
    n, steps, accs, gaps, cuts, shuffles, serialise, resend, removed, start, t_start = walk
    x, y = start
    ts = t_start
    fixes = []
    for i in range(n):
        x = max(-600.0, min(600.0, x + steps[i][0]))
        y = max(-600.0, min(600.0, y + steps[i][1]))
        ts += gaps[i]
        lat, lon = at(x, y)
        fixes.append(Fix(lat, lon, accs[i], ts, i))
    assert all(b.ts > a.ts for a, b in zip(fixes, fixes[1:]))
    by_ts = {f.ts: f for f in fixes}

    index = StoreIndex(WALK_STORES)
    mint = minter()
    state = DeviceState()
    events = []
    all_ignored = []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        batch = list(fixes[a:b])
        stale = None
        if resend[k] is not None and resend[k] < a:
            stale = fixes[resend[k]]
            batch.append(Fix(stale.lat, stale.lon, stale.accuracy_m, stale.ts, 10_000 + resend[k]))
        shuffles[k].shuffle(batch)
        if removed[k] is not None:  # the store list changes between calls
            if index.get(removed[k]) is not None:
                index.remove(removed[k])
            else:
                index.upsert(next(s for s in WALK_STORES if s.store_id == removed[k]))
        if serialise[k]:
            state = DeviceState.from_json(json.loads(json.dumps(state.to_json())))
        out = evaluate(state, batch, index, POLICY, mint)
        state = out.state
        events += [(t, index) for t in out.transitions]
        all_ignored += out.ignored
        assert out.accepted + len(out.ignored) == len(batch)
        if stale is not None:  # a fix sent again later is never applied twice
            assert Ignored(10_000 + resend[k], "duplicate" if stale.ts == fixes[a - 1].ts else "out_of_order") in out.ignored
        for t in out.transitions:  # exits only by the rules, enters only where allowed
            f = by_ts[t.ts]
            assert f.accuracy_m <= POLICY.max_accuracy_m
            store = index.get(t.store_id)
            if t.type == "enter":
                assert store is not None and store.fence.contains(f.lat, f.lon)
                assert store.enabled and store.is_open(t.ts)
            elif t.type == "dwell":
                assert store is not None and store.enabled and store.is_open(t.ts)
            elif t.exit_reason == "left":
                assert store.fence.distance_outside_m(f.lat, f.lon) > max(POLICY.exit_buffer_m, f.accuracy_m)
            elif t.exit_reason == "store_removed":
                assert store is None
            else:
                assert t.exit_reason == "timeout"

    # every ignored fix is accounted for with the right reason
    for ig in all_ignored:
        if ig.index < 10_000:
            assert ig.reason == "low_accuracy" and fixes[ig.index].accuracy_m > POLICY.max_accuracy_m
    low = {f.index for f in fixes if f.accuracy_m > POLICY.max_accuracy_m}
    assert {ig.index for ig in all_ignored if ig.reason == "low_accuracy"} == low

    # the sequence, per store: enter (dwell)? exit, enter (dwell)? exit ...
    seen_visits: set[str] = set()
    open_visit: dict[str, dict] = {}
    last_ts = -math.inf
    for t, _ in events:
        assert t.ts >= last_ts
        last_ts = t.ts
        cur = open_visit.get(t.store_id)
        if t.type == "enter":
            assert cur is None, f"second enter in one visit: {t}"
            assert t.visit_id not in seen_visits, f"visit id reused: {t}"
            seen_visits.add(t.visit_id)
            open_visit[t.store_id] = {"id": t.visit_id, "dwell": False, "entered": t.ts}
        elif t.type == "dwell":
            assert cur is not None and cur["id"] == t.visit_id, f"dwell outside a visit: {t}"
            assert not cur["dwell"], f"second dwell in one visit: {t}"
            cur["dwell"] = True
            threshold = next(s for s in WALK_STORES if s.store_id == t.store_id).dwell_s or POLICY.dwell_s
            assert t.ts - cur["entered"] >= threshold
        else:
            assert cur is not None and cur["id"] == t.visit_id, f"exit without an enter: {t}"
            assert t.dwell_s is not None and 0 <= t.dwell_s <= t.ts - cur["entered"]
            del open_visit[t.store_id]
    # what is still open is exactly the state
    assert {sid: v["id"] for sid, v in open_visit.items()} == {sid: v.visit_id for sid, v in state.visits.items()}
    assert state.last_ts == max((f.ts for f in fixes), default=None)


# ---------------------------------------------------------------------------------------------
# hysteresis: a phone sitting on a fence edge


def _jitter_run(store, base_dx, base_dy, seed, policy=POLICY, acc=10.0):
    rng = np.random.default_rng(seed)
    noise = rng.uniform(-15.0, 15.0, (1800, 2))
    index = StoreIndex([store])
    fixes = [fix_at(base_dx + nx, base_dy + ny, T0 + i, acc, i) for i, (nx, ny) in enumerate(noise)]
    inside = sum(bool(index.containing(f.lat, f.lon)) for f in fixes)
    out = run(index, fixes, policy)
    return [t.type for t in out.transitions], inside


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("case,store,base", [
    ("circle, 5 m outside", circle("c", radius_m=100), (105.0, 0.0)),
    ("circle, on the edge", circle("c", radius_m=100), (0.0, -100.0)),
    ("polygon, 5 m outside", square("q", half_m=100), (105.0, 20.0)),
    ("polygon, on the edge", square("q", half_m=100), (-30.0, 100.0)),
])
def test_a_phone_on_the_fence_edge_does_not_flap(case, store, base, seed):
    types, inside = _jitter_run(store, *base, seed)
    assert inside > 300  # the noise really carries the phone in and out, many times
    assert types.count("enter") == 1
    assert types.count("exit") == 0
    assert types.count("dwell") == 1


@pytest.mark.parametrize("store,base", [(circle("c", radius_m=100), (105.0, 0.0)), (square("q", half_m=100), (105.0, 20.0))])
def test_without_the_exit_buffer_the_same_phone_would_flap(store, base):
    """The scenario above is a real test of the buffer: with none, the same fixes flap."""
    types, _ = _jitter_run(store, *base, 1, policy=TransitionPolicy(exit_buffer_m=0.0), acc=5.0)
    assert types.count("enter") > 5 and types.count("exit") > 5


# ---------------------------------------------------------------------------------------------
# exit rules


@pytest.fixture
def one_store():
    return StoreIndex([circle("s", radius_m=100)])


def test_exit_left_when_farther_than_the_buffer(one_store):
    out = run(one_store, [fix_at(0, 0, T0), fix_at(0, 131, T0 + 60)])
    assert kinds(out.transitions) == [("enter", "s"), ("exit", "s")]
    ex = out.transitions[1]
    assert ex.exit_reason == "left" and ex.ts == T0 + 60 and ex.dwell_s == 60
    assert ex.visit_id == out.transitions[0].visit_id
    assert out.state.visits == {}


def test_no_exit_within_the_buffer(one_store):
    out = run(one_store, [fix_at(0, 0, T0), fix_at(0, 125, T0 + 60), fix_at(-128, 0, T0 + 120),
                          fix_at(0, -100.5, T0 + 180)])
    assert kinds(out.transitions) == [("enter", "s")]
    assert list(out.state.visits) == ["s"]


def test_the_buffer_grows_with_the_fix_accuracy(one_store):
    # 40 m outside but accuracy 50 m: could still be inside
    out = run(one_store, [fix_at(0, 0, T0), fix_at(0, 140, T0 + 60, acc=50)])
    assert kinds(out.transitions) == [("enter", "s")]
    # 60 m outside with the same accuracy: out
    out = run(one_store, [fix_at(0, 160, T0 + 120, acc=50)], state=out.state)
    assert [(t.type, t.exit_reason) for t in out.transitions] == [("exit", "left")]


def test_exit_timeout_without_an_inside_fix(one_store):
    out = run(one_store, [fix_at(0, 0, T0), fix_at(0, 50, T0 + 100), fix_at(0, 120, T0 + 500),
                          fix_at(0, 120, T0 + 1000)])
    # last inside at T0 + 100: T0 + 1000 is exactly 900 s later, not more (the dwell came at
    # T0 + 500, in the buffer, which counts as presence)
    assert kinds(out.transitions) == [("enter", "s"), ("dwell", "s")]
    out = run(one_store, [fix_at(0, 120, T0 + 1000.5)], state=out.state)
    assert [(t.type, t.exit_reason) for t in out.transitions] == [("exit", "timeout")]
    # the visit lasted until the last inside fix
    assert out.transitions[0].dwell_s == 100 and out.transitions[0].ts == T0 + 1000.5


def test_a_fix_within_the_buffer_does_not_keep_a_visit_alive(one_store):
    fixes = [fix_at(0, 0, T0)] + [fix_at(0, 115, T0 + 60 * k) for k in range(1, 16)] + [fix_at(0, 115, T0 + 901)]
    out = run(one_store, fixes)
    assert [(t.type, t.exit_reason) for t in out.transitions] == [("enter", None), ("dwell", None), ("exit", "timeout")]
    assert out.transitions[-1].ts == T0 + 901


def test_exit_store_removed(one_store):
    out = run(one_store, [fix_at(0, 0, T0)])
    one_store.remove("s")
    # a low-accuracy fix changes nothing, even now
    out = run(one_store, [fix_at(0, 0, T0 + 10, acc=500)], state=out.state)
    assert out.transitions == [] and list(out.state.visits) == ["s"]
    out = run(one_store, [fix_at(0, 0, T0 + 20)], state=out.state)  # still standing in the old fence
    assert [(t.type, t.exit_reason) for t in out.transitions] == [("exit", "store_removed")]
    assert out.state.visits == {}


def test_a_visit_survives_a_store_update(one_store):
    out = run(one_store, [fix_at(0, 0, T0)])
    one_store.upsert(circle("s", radius_m=150, name="renamed"))
    out = run(one_store, [fix_at(0, 140, T0 + 30), fix_at(0, 0, T0 + 400)], state=out.state)
    assert kinds(out.transitions) == [("dwell", "s")]


# ---------------------------------------------------------------------------------------------
# ignored fixes


def test_low_accuracy_fixes_cause_no_transition(one_store):
    out = run(one_store, [fix_at(0, 0, T0, acc=200.5, index=0), fix_at(0, 0, T0 + 1, acc=1e6, index=1)])
    assert out.transitions == [] and out.accepted == 0
    assert out.ignored == [Ignored(0, "low_accuracy"), Ignored(1, "low_accuracy")]
    # exactly max_accuracy_m is good enough
    out = run(one_store, [fix_at(0, 0, T0 + 2, acc=200.0, index=2)], state=out.state)
    assert kinds(out.transitions) == [("enter", "s")]
    # far away but inaccurate: no exit; and not when the dwell is due either
    out = run(one_store, [fix_at(0, 5000, T0 + 400, acc=250, index=3)], state=out.state)
    assert out.transitions == [] and out.ignored == [Ignored(3, "low_accuracy")]
    assert list(out.state.visits) == ["s"]


def test_out_of_order_and_duplicate_fixes(one_store):
    out = run(one_store, [fix_at(0, 0, T0 + 100, index=0)])
    assert out.accepted == 1
    out = run(one_store, [fix_at(0, 500, T0 + 50, index=0), fix_at(0, 500, T0 + 100, index=1),
                          fix_at(0, 0, T0 + 400, index=2), fix_at(0, 500, T0 + 400, index=3)], state=out.state)
    assert out.ignored == [Ignored(0, "out_of_order"), Ignored(1, "duplicate"), Ignored(3, "duplicate")]
    assert out.accepted == 1
    assert kinds(out.transitions) == [("dwell", "s")]  # the stale far fixes did not end the visit
    assert out.state.last_ts == T0 + 400


def test_an_unsorted_batch_is_processed_in_time_order(one_store):
    batch = [fix_at(0, 500, T0 + 600, index=0), fix_at(0, 0, T0, index=1), fix_at(0, 10, T0 + 310, index=2)]
    out = run(one_store, batch)
    assert [(t.type, t.ts) for t in out.transitions] == [("enter", T0), ("dwell", T0 + 310), ("exit", T0 + 600)]
    assert out.ignored == [] and out.accepted == 3
    assert out.state.last_ts == T0 + 600


# ---------------------------------------------------------------------------------------------
# stores that accept no visits


SUNDAY_NOON = datetime(2024, 6, 2, 12, 0, tzinfo=ROME).timestamp()
MONDAY_NOON = datetime(2024, 6, 3, 12, 0, tzinfo=ROME).timestamp()


def _stay(index, t0, seconds=1200, step=60):
    return run(index, [fix_at(0, 0, t0 + k) for k in range(0, seconds + 1, step)])


def test_disabled_store_gets_no_enter_and_no_dwell():
    out = _stay(StoreIndex([circle("s", enabled=False)]), MONDAY_NOON)
    assert out.transitions == [] and out.state.visits == {}


def test_closed_store_gets_no_enter_and_no_dwell():
    index = StoreIndex([circle("s", opening_hours="Mo-Fr 09:00-18:00", timezone="Europe/Rome")])
    assert _stay(index, SUNDAY_NOON).transitions == []
    # the same store on a Monday at noon is open
    out = _stay(index, MONDAY_NOON)
    assert kinds(out.transitions) == [("enter", "s"), ("dwell", "s")]
    # and on Monday before nine, Rome time (06:xx UTC in June), it is not
    assert _stay(index, datetime(2024, 6, 3, 8, 30, tzinfo=ROME).timestamp(), seconds=1740).transitions == []


def test_a_store_opening_during_the_stay_starts_the_visit_at_opening():
    index = StoreIndex([circle("s", opening_hours="Mo-Fr 09:00-18:00")])
    start = datetime(2024, 6, 3, 8, 50, tzinfo=ROME).timestamp()
    out = _stay(index, start, seconds=1500)
    nine = datetime(2024, 6, 3, 9, 0, tzinfo=ROME).timestamp()
    assert [(t.type, t.ts) for t in out.transitions] == [("enter", nine), ("dwell", nine + 300)]


def test_a_visit_begun_while_open_gets_no_dwell_after_closing_but_still_exits():
    index = StoreIndex([circle("s", opening_hours="Mo-Fr 09:00-18:00")])
    t = datetime(2024, 6, 3, 17, 57, tzinfo=ROME).timestamp()
    out = run(index, [fix_at(0, 0, t), fix_at(0, 0, t + 120), fix_at(0, 0, t + 400), fix_at(0, 0, t + 800)])
    assert kinds(out.transitions) == [("enter", "s")]  # 18:00 came before the dwell was due
    out = run(index, [fix_at(0, 400, t + 900)], state=out.state)
    assert [(x.type, x.exit_reason) for x in out.transitions] == [("exit", "left")]


def test_a_store_disabled_during_a_visit_still_ends_it():
    index = StoreIndex([circle("s")])
    out = run(index, [fix_at(0, 0, T0)])
    index.upsert(circle("s", enabled=False))
    out = run(index, [fix_at(0, 0, T0 + 400)], state=out.state)
    assert out.transitions == []  # no dwell for a disabled store
    out = run(index, [fix_at(0, 300, T0 + 500)], state=out.state)
    assert [(x.type, x.exit_reason) for x in out.transitions] == [("exit", "left")]


# ---------------------------------------------------------------------------------------------
# dwell


def test_per_store_dwell_overrides_the_policy():
    index = StoreIndex([circle("quick", dwell_s=60), circle("slow", dx=1000, dwell_s=1000), circle("plain", dx=2000)])
    for sid, dx, due in (("quick", 0, 60), ("slow", 1000, 1000), ("plain", 2000, 300)):
        fixes = [fix_at(dx, 0, T0), fix_at(dx, 5, T0 + due - 0.5), fix_at(dx, 0, T0 + due), fix_at(dx, 5, T0 + due + 200)]
        out = run(index, fixes)
        assert [(t.type, t.store_id, t.ts) for t in out.transitions] == [("enter", sid, T0), ("dwell", sid, T0 + due)]
        assert out.transitions[1].dwell_s == due


def test_dwell_counts_presence_in_the_buffer():
    index = StoreIndex([circle("s")])
    out = run(index, [fix_at(0, 0, T0), fix_at(0, 120, T0 + 310)])  # 20 m out, within the buffer
    assert kinds(out.transitions) == [("enter", "s"), ("dwell", "s")]


# ---------------------------------------------------------------------------------------------
# close_all


def test_close_all_closes_every_open_visit():
    index = StoreIndex([circle("a", radius_m=100), circle("b", dx=50, radius_m=100), circle("far", dx=5000)])
    mint = minter()
    out = run(index, [fix_at(20, 0, T0), fix_at(25, 0, T0 + 100), fix_at(26, 110, T0 + 200)], mint=mint)
    assert sorted(out.state.visits) == ["a", "b"]
    ids = {sid: v.visit_id for sid, v in out.state.visits.items()}
    closed = close_all(out.state, T0 + 250, "consent_withdrawn")
    assert sorted((t.type, t.store_id, t.visit_id, t.ts, t.exit_reason, t.dwell_s) for t in closed) == [
        ("exit", "a", ids["a"], T0 + 250, "consent_withdrawn", 100.0),
        ("exit", "b", ids["b"], T0 + 250, "consent_withdrawn", 100.0)]
    assert out.state.visits == {}
    assert close_all(out.state, T0 + 300, "erased") == []
    # a later fix inside starts a new visit with a new id
    nxt = run(index, [fix_at(20, 0, T0 + 400)], state=out.state, mint=mint)
    assert sorted(kinds(nxt.transitions)) == [("enter", "a"), ("enter", "b")]
    assert not {t.visit_id for t in nxt.transitions} & set(ids.values())


def test_state_json_round_trip_is_lossless():
    index = StoreIndex([circle("a"), circle("b", dx=50)])
    out = run(index, [fix_at(0, 0, T0 + 0.25), fix_at(10, 0, T0 + 400.125)])
    raw = json.loads(json.dumps(out.state.to_json()))
    back = DeviceState.from_json(raw)
    assert back == out.state
    assert DeviceState.from_json(None) == DeviceState() == DeviceState.from_json({})


# ---------------------------------------------------------------------------------------------
# the transition cap (per device, per minute of server time)

MINUTE = (T0 // 60 + 60) * 60  # server time: the cap counts its minutes, not the fixes' clock
NOW = MINUTE + 10


def _flapping(t0, n, step=1e-6, first_index=0):
    """n fixes alternating inside one store and far from it, `step` seconds apart."""
    return [fix_at(0, 0, t0 + i * step, index=first_index + i) if i % 2 == 0 else
            fix_at(2000, 0, t0 + i * step, index=first_index + i) for i in range(n)]


@pytest.mark.parametrize("cap", [1, 7, 30])
def test_a_flapping_phone_makes_at_most_the_cap_of_transitions_per_minute(one_store, cap):
    policy = TransitionPolicy(max_transitions_per_min=cap)
    out = evaluate(DeviceState(), _flapping(T0, 500), one_store, policy, minter(), now=NOW)
    assert len(out.transitions) == cap
    assert [t.type for t in out.transitions] == (["enter", "exit"] * cap)[:cap]
    capped = [i for i in out.ignored if i.reason == "transition_rate"]
    # every fix that would have made a transition is refused; the others (inside an open visit,
    # or outside with none) change nothing and are accepted
    assert len(capped) == 250 - cap // 2 and out.accepted == 500 - len(capped)
    # the same minute, in a later request (state saved and read back): nothing more
    state = DeviceState.from_json(json.loads(json.dumps(out.state.to_json())))
    more = evaluate(state, _flapping(T0 + 1, 100, first_index=500), one_store, policy, minter(), now=MINUTE + 59.9)
    assert more.transitions == [] and {i.reason for i in more.ignored} == {"transition_rate"}
    # the next minute: a fresh allowance
    nxt = evaluate(more.state, _flapping(T0 + 2, 100, first_index=600), one_store, policy, minter(), now=MINUTE + 60)
    assert len(nxt.transitions) == cap


def test_a_capped_fix_leaves_no_trace_in_the_visits(one_store):
    # one fix left with a budget of 0 would exit: it is ignored whole, the visit stays open as it was
    policy = TransitionPolicy(max_transitions_per_min=1)
    out = evaluate(DeviceState(), [fix_at(0, 0, T0), fix_at(2000, 0, T0 + 10, index=1)], one_store, policy,
                   minter(), now=NOW)
    assert kinds(out.transitions) == [("enter", "s")]
    assert out.ignored == [Ignored(1, "transition_rate")]
    assert list(out.state.visits) == ["s"] and out.state.visits["s"].last_inside_at == T0
    assert out.state.last_ts == T0 + 10  # like any ignored fix, it is not replayed later


def test_a_fix_that_would_overrun_the_cap_is_dropped_whole():
    # two overlapping stores: entering both takes two transitions; with one left, neither happens
    index = StoreIndex([circle("a", radius_m=100), circle("b", dx=50, radius_m=100)])
    policy = TransitionPolicy(max_transitions_per_min=3)
    state = DeviceState(rate_minute=int(NOW // 60), rate_used=2)
    out = evaluate(state, [fix_at(20, 0, T0)], index, policy, minter(), now=NOW)
    assert out.transitions == [] and out.state.visits == {} and out.ignored == [Ignored(0, "transition_rate")]


def test_no_cap_without_a_server_time(one_store):
    out = run(one_store, _flapping(T0, 200))
    assert len(out.transitions) == 200 and out.ignored == []


def test_a_real_walk_stays_under_the_default_cap():
    # a phone walking past 20 shops one fix a second: far fewer transitions than the default cap
    index = StoreIndex([circle(f"s{i}", dx=i * 150, radius_m=40) for i in range(20)])
    fixes = [fix_at(i * 1.4, 0, T0 + i, index=i) for i in range(60)]
    out = evaluate(DeviceState(), fixes, index, POLICY, minter(), now=NOW)
    assert out.transitions and not [i for i in out.ignored if i.reason == "transition_rate"]


# ---------------------------------------------------------------------------------------------
# expire_silent (the exit sweep)


def test_expire_silent_ends_only_visits_past_the_timeout():
    index = StoreIndex([circle("a", radius_m=100), circle("b", dx=5000, radius_m=100)])
    state = DeviceState(T0 + 500, {"a": Visit("visit-a", T0, T0 + 100), "b": Visit("visit-b", T0 + 400, T0 + 500)})
    assert state.silent_since() == T0 + 100
    assert expire_silent(state, T0 + 100 + POLICY.exit_timeout_s, POLICY) == []  # not more than the timeout yet
    out = expire_silent(state, T0 + 100 + POLICY.exit_timeout_s + 1, POLICY)
    assert [(t.type, t.store_id, t.visit_id, t.exit_reason, t.dwell_s, t.ts) for t in out] == [
        ("exit", "a", "visit-a", "timeout", 100.0, T0 + 100 + POLICY.exit_timeout_s)]
    assert list(state.visits) == ["b"] and state.silent_since() == T0 + 500
    # a fix after the timeout starts a new visit
    back = run(index, [fix_at(0, 0, T0 + 2000)], state=state)
    assert ("enter", "a") in kinds(back.transitions)
    assert back.state.visits["a"].visit_id != "visit-a"
