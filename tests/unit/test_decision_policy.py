"""The visit decision policy: each reason alone, their order, quiet hours across midnight, the
cap counted in the customer's local day, the holdout group's size and stability."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vicino.services.recommender.domain.decision_policy import (REASONS, DecisionRules, OfferChoice, QuietHours, Situation,
                                                         decide, gate, holdout_bucket, in_holdout, local_day_start,
                                                         local_minute_of_day, zone)

ROME = ZoneInfo("Europe/Rome")
NOW = datetime(2024, 6, 3, 12, 0, tzinfo=ROME).timestamp()  # noon in Rome
OFFER = OfferChoice("o1", 0.9, 8.0, "EUR", "Mug -20%", "Today only", "model")
RULES = DecisionRules(cap_per_day=3, store_cooldown_s=6 * 3600, quiet_hours=QuietHours.parse("21:00-09:00"),
                      holdout_percent=0.0, max_event_age_s=900)


def situation(**kw) -> Situation:
    base = dict(customer_id="c-1", event_ts=NOW - 5, now=NOW, marketing_consent=True, timezone="Europe/Rome",
                pushes_today=0, last_push_at_store=None)
    return Situation(**{**base, **kw})


def reason(rules: DecisionRules = RULES, offer: OfferChoice | None = OFFER, **kw) -> str | None:
    return decide(situation(**kw), rules, offer).reason


def at(hour: int, minute: int = 0, tz: str = "Europe/Rome", day: int = 3) -> float:
    return datetime(2024, 6, day, hour, minute, tzinfo=ZoneInfo(tz)).timestamp()


def test_an_ordinary_visit_gets_its_push_with_the_offer():
    d = decide(situation(), RULES, OFFER)
    assert (d.outcome, d.reason, d.offer, d.holdout, d.counts_as_push) == ("send", None, OFFER, False, True)


def test_each_reason_alone():
    assert reason(visit_decided=True) == "visit_already_decided"
    assert reason(visit_ended=True) == "visit_ended"
    assert reason(event_ts=NOW - 901) == "visit_ended"
    assert reason(event_ts=NOW - 900) is None
    assert reason(marketing_consent=False) == "no_marketing_consent"
    assert reason(now=at(22), event_ts=at(22)) == "quiet_hours"
    assert reason(pushes_today=3) == "daily_cap"
    assert reason(pushes_today=2) is None
    assert reason(last_push_at_store=NOW - 6 * 3600 + 1) == "store_cooldown"
    assert reason(last_push_at_store=NOW - 6 * 3600) is None
    assert reason(offer=None) == "no_eligible_offer"


def test_a_suppressed_decision_carries_no_offer_and_does_not_count():
    d = decide(situation(pushes_today=5), RULES, OFFER)
    assert (d.outcome, d.offer, d.counts_as_push) == ("suppress", None, False)


def test_the_first_failing_reason_is_reported_in_order():
    failing = dict(visit_decided=True, visit_ended=True, marketing_consent=False, now=at(23), event_ts=at(23),
                   pushes_today=9, last_push_at_store=at(23) - 1)
    order = ["visit_decided", "visit_ended", "marketing_consent", "now", "pushes_today", "last_push_at_store"]
    expected = ["visit_already_decided", "visit_ended", "no_marketing_consent", "quiet_hours", "daily_cap",
                "store_cooldown", "no_eligible_offer"]
    for i, name in enumerate(order):
        kw = {k: failing[k] for k in order[i:]}
        if "now" in kw:
            kw["event_ts"] = failing["event_ts"]
        assert reason(offer=None, **kw) == expected[i], name
    assert reason(offer=None) == "no_eligible_offer"
    assert set(expected) | {"holdout"} == set(REASONS)


def test_gate_is_what_suppresses_before_ranking():
    assert gate(situation(), RULES) is None
    assert gate(situation(pushes_today=3), RULES) == "daily_cap"


# holdout ---------------------------------------------------------------------------------------

def holdout_customer(percent: float) -> str:
    return next(f"h-{i}" for i in range(10_000) if in_holdout(f"h-{i}", percent))


def test_a_holdout_customer_is_logged_with_the_offer_and_gets_no_push():
    rules = DecisionRules(holdout_percent=10.0)
    cid = holdout_customer(10.0)
    d = decide(situation(customer_id=cid), rules, OFFER)
    assert (d.outcome, d.reason, d.offer, d.holdout, d.counts_as_push) == ("suppress", "holdout", OFFER, True, True)
    # the other reasons come first; the group is still recorded
    d = decide(situation(customer_id=cid, marketing_consent=False), rules, OFFER)
    assert (d.reason, d.holdout, d.counts_as_push) == ("no_marketing_consent", True, False)


def test_holdout_bucket_is_sha256_of_the_namespaced_id():
    cid = "cust-42"
    digest = hashlib.sha256(b"vicino.holdout.v1:" + cid.encode()).digest()
    assert holdout_bucket(cid) == int.from_bytes(digest[:8], "big") % 10_000


@pytest.mark.parametrize("percent", [0.0, 5.0, 10.0, 33.3, 100.0])
def test_holdout_share_is_close_to_the_percent(percent):
    ids = [f"customer-{i}" for i in range(20_000)]
    share = sum(in_holdout(c, percent) for c in ids) / len(ids) * 100
    assert abs(share - percent) < 1.0, share
    assert [in_holdout(c, percent) for c in ids[:500]] == [in_holdout(c, percent) for c in ids[:500]]


@given(st.text(min_size=1, max_size=40), st.floats(0, 100), st.floats(0, 100))
def test_holdout_is_stable_and_monotone_in_the_percent(cid, p1, p2):
    lo, hi = sorted((p1, p2))
    assert in_holdout(cid, lo) == in_holdout(cid, lo)
    if in_holdout(cid, lo):
        assert in_holdout(cid, hi)  # raising the percent only adds customers to the holdout
    assert not in_holdout(cid, 0.0) and in_holdout(cid, 100.0)


# quiet hours -------------------------------------------------------------------------------------

def test_quiet_hours_parse_and_refuse():
    assert QuietHours.parse("21:00-09:00") == QuietHours(21 * 60, 9 * 60)
    assert QuietHours.parse(" 13:30-14:00 ") == QuietHours(13 * 60 + 30, 14 * 60)
    assert QuietHours.parse("") is None
    for bad in ("21-09", "21:00", "24:00-09:00", "21:00-09:60", "9:00-10:00", "10:00-10:00", "a-b", "1:00-2:00-3:00"):
        with pytest.raises(ValueError):
            QuietHours.parse(bad)


@given(st.integers(0, 23), st.integers(0, 59), st.integers(0, 23), st.integers(0, 59), st.integers(0, 1439))
def test_quiet_hours_for_any_window_and_minute(h1, m1, h2, m2, minute):
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        return
    q = QuietHours.parse(f"{h1:02d}:{m1:02d}-{h2:02d}:{m2:02d}")
    # walk forward from the start: the minute is quiet iff it is reached before the end
    inside = (minute - start) % 1440 < (end - start) % 1440
    assert q.contains(minute) == inside


@pytest.mark.parametrize("hour, minute, quiet", [(20, 59, False), (21, 0, True), (23, 59, True), (0, 0, True),
                                                  (3, 0, True), (8, 59, True), (9, 0, False), (12, 0, False)])
def test_quiet_hours_across_midnight_in_rome(hour, minute, quiet):
    t = at(hour, minute)
    assert (reason(now=t, event_ts=t) == "quiet_hours") is quiet


def test_quiet_hours_are_the_customers_local_time():
    t = at(12, tz="America/New_York")  # noon in New York is 18:00 in Rome
    assert reason(now=t, event_ts=t, timezone="America/New_York") is None
    t = at(22, tz="America/New_York")  # 22:00 in New York is 04:00 in Rome: both quiet
    assert reason(now=t, event_ts=t, timezone="America/New_York") == "quiet_hours"
    t = at(8, tz="Asia/Tokyo")         # 08:00 in Tokyo is 01:00 in Rome
    assert reason(now=t, event_ts=t, timezone="Asia/Tokyo") == "quiet_hours"
    t = at(15, tz="Asia/Tokyo")        # 15:00 in Tokyo is 08:00 in Rome: quiet in Rome, not in Tokyo
    assert reason(now=t, event_ts=t, timezone="Asia/Tokyo") is None
    assert reason(now=t, event_ts=t, timezone="Europe/Rome") == "quiet_hours"


def test_no_quiet_hours():
    t = at(3)
    assert reason(DecisionRules(quiet_hours=None, holdout_percent=0), now=t, event_ts=t) is None


# the customer's local day -------------------------------------------------------------------------

def test_an_unknown_or_missing_time_zone_is_rome():
    assert zone(None) == zone("") == zone("Mars/Olympus") == ROME


@settings(max_examples=300)
@given(st.floats(1.5e9, 2.2e9), st.sampled_from(["Europe/Rome", "America/New_York", "Asia/Kolkata",
                                                  "Pacific/Chatham", "Australia/Lord_Howe", "UTC",
                                                  "America/Santiago", "Asia/Gaza"]))
def test_local_day_start_is_the_last_local_midnight(now, tz):
    start = local_day_start(now, tz)
    z = ZoneInfo(tz)
    assert now - 26 * 3600 < start <= now
    local_now, local_start = datetime.fromtimestamp(now, z), datetime.fromtimestamp(start, z)
    assert local_start.date() == local_now.date()
    # nothing of the same local date lies before it (midnight itself may not exist on a DST day)
    assert datetime.fromtimestamp(start - 1, z).date() < local_now.date()


def test_the_cap_counts_the_local_day_not_the_utc_day():
    # 23:30 and 00:30 in New York are the same UTC day but two local days
    late = at(23, 30, tz="America/New_York")
    after_midnight = late + 3600
    assert local_day_start(after_midnight, "America/New_York") > late
    assert local_day_start(after_midnight, "UTC") < late
    assert local_minute_of_day(after_midnight, "America/New_York") == 30


def test_the_cap_of_zero_sends_nothing():
    assert reason(DecisionRules(cap_per_day=0, holdout_percent=0)) == "daily_cap"


@given(st.integers(0, 10), st.integers(0, 10))
def test_cap_for_any_count(cap, sent):
    got = reason(DecisionRules(cap_per_day=cap, holdout_percent=0, quiet_hours=None), pushes_today=sent)
    assert got == ("daily_cap" if sent >= cap else None)


@given(st.integers(0, 86_400), st.integers(0, 86_400))  # whole seconds: NOW - gap is exact
def test_cooldown_for_any_gap(cooldown, gap):
    got = reason(DecisionRules(store_cooldown_s=cooldown, holdout_percent=0, quiet_hours=None),
                 last_push_at_store=NOW - gap)
    assert got == ("store_cooldown" if gap < cooldown else None)


def test_a_dst_day_in_rome_has_its_own_midnight():
    # 2024-03-31: clocks go from 02:00 to 03:00 in Rome; the local day is 23 h long
    t = datetime(2024, 3, 31, 23, 0, tzinfo=ROME).timestamp()
    start = local_day_start(t, "Europe/Rome")
    assert datetime.fromtimestamp(start, ROME) == datetime(2024, 3, 31, 0, 0, tzinfo=ROME)
    assert t - start == timedelta(hours=22).total_seconds()
