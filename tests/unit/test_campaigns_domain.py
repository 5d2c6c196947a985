"""The campaign rules, pure (domain/campaigns.py): legal status changes, the audience filters on
a hand-made history, the order of a campaign's checks and the reason each gives, the local week,
the holdout per campaign, and the default campaign's holdout being the one of before campaigns."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from vicino.services.recommender.domain.campaigns import (Audience, Campaign, CampaignCounters, CampaignIn,
                                                          OfferPool, TRANSITIONS, VisitContext, campaign_holdout,
                                                          default_campaign, facts_from_history, in_audience,
                                                          offer_allowed, precheck, transition_error, triggered,
                                                          week_start_at)
from vicino.services.recommender.domain.decision_policy import in_holdout

ROME = ZoneInfo("Europe/Rome")
DAY = 86_400.0


def at(day: int, hour: int, minute: int = 0) -> float:
    return datetime(2026, 6, day, hour, minute, tzinfo=ROME).timestamp()


NOW = at(3, 12)  # Wednesday 3 June 2026, noon in Rome
HISTORY = [  # newest first, as the hot history is read
    {"type": "purchase", "channel": "store", "item_id": "mug", "ts": NOW - 2 * DAY, "country": "IT"},
    {"type": "view", "channel": "web", "item_id": "tea", "ts": NOW - 3 * DAY},
    {"type": "purchase", "channel": "web", "item_id": "tea", "ts": NOW - 40 * DAY, "country": "United Kingdom"},
    {"type": "purchase", "channel": "store", "item_id": "mug", "ts": NOW - 50 * DAY},
]
CATEGORIES = {"mug": "MUG", "tea": "TEA"}


def camp(campaign_id: str = "c", **kw) -> Campaign:
    return Campaign(campaign_id, 1, CampaignIn.model_validate({"name": "n", "status": "active", **kw}), 0.0, 0.0)


def ctx(**kw) -> VisitContext:
    base = dict(event_type="dwell", store_id="s-1", store_brand="Coop", store_timezone="Europe/Rome",
                customer_timezone="Europe/Rome", now=NOW)
    return VisitContext(**{**base, **kw})


FACTS = facts_from_history("cu-1", HISTORY, {}, CATEGORIES)


def test_the_facts_a_history_gives():
    assert (FACTS.country, FACTS.purchases, FACTS.last_purchase_ts) == ("IT", 3, NOW - 2 * DAY)
    assert FACTS.channels == {"store", "web"} and FACTS.categories == {"mug", "tea"}
    assert FACTS.bought_at == {"mug": NOW - 2 * DAY, "tea": NOW - 40 * DAY}
    # the CRM's country wins over the interactions'
    assert facts_from_history("cu-1", HISTORY, {"country": "FR"}, CATEGORIES).country == "FR"


@pytest.mark.parametrize("audience, expected", [
    ({}, True),
    ({"countries": ["it"]}, True), ({"countries": ["FR"]}, False),
    ({"channels": ["app", "web"]}, True), ({"channels": ["email"]}, False),
    ({"min_purchases": 3}, True), ({"min_purchases": 4}, False), ({"max_purchases": 2}, False),
    ({"purchased_within_days": 2}, True), ({"purchased_within_days": 1.5}, False),
    ({"not_purchased_within_days": 1}, True), ({"not_purchased_within_days": 3}, False),
    ({"bought_items": ["tea", "x"]}, True), ({"bought_items": ["x"]}, False),
    ({"never_bought_items": ["x"]}, True), ({"never_bought_items": ["mug"]}, False),
    ({"bought_categories": ["tea"]}, True), ({"never_bought_categories": ["MUG"]}, False),
    ({"include_customer_ids": ["cu-1"]}, True), ({"include_customer_ids": ["cu-2"]}, False),
    ({"exclude_customer_ids": ["cu-1"]}, False),
])
def test_each_audience_filter(audience, expected):
    assert in_audience(Audience.model_validate(audience), FACTS, NOW) is expected


def test_a_customer_with_no_purchase_is_lapsed_but_not_recent():
    empty = facts_from_history("cu-9", [], {}, {})
    assert in_audience(Audience(not_purchased_within_days=30), empty, NOW)
    assert not in_audience(Audience(purchased_within_days=30), empty, NOW)
    assert not in_audience(Audience(countries=["IT"]), empty, NOW)


def test_every_status_change():
    legal = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert legal == {("draft", "draft"), ("draft", "active"), ("draft", "ended"), ("active", "active"),
                     ("active", "paused"), ("active", "ended"), ("paused", "paused"), ("paused", "active"),
                     ("paused", "ended")}
    for a in TRANSITIONS:
        for b in TRANSITIONS:
            assert (transition_error(a, b) is None) == ((a, b) in legal)
    assert transition_error(None, "ended") and transition_error(None, "draft") is None


def test_triggered_keeps_matching_active_and_paused_campaigns_in_priority_order():
    cs = [camp("b", priority=1), camp("a", priority=1), camp("z", priority=9, status="paused"),
          camp("d", status="draft"), camp("e", trigger={"on": "enter"}),
          camp("s", trigger={"on": ["dwell", "enter"], "store_ids": ["s-2"]}),
          camp("br", priority=5, trigger={"on": "dwell", "brands": ["coop"]})]
    assert [c.campaign_id for c in triggered(cs, ctx())] == ["z", "br", "a", "b"]
    assert [c.campaign_id for c in triggered(cs, ctx(event_type="enter", store_id="s-2"))] == ["e", "s"]


def test_the_checks_in_their_order():
    none = CampaignCounters()
    assert precheck(camp(status="paused", starts_at=NOW + 1), ctx(), FACTS, none) == "paused"
    assert precheck(camp(starts_at=NOW + 1), ctx(), FACTS, none) == "outside_schedule"
    assert precheck(camp(ends_at=NOW), ctx(), FACTS, none) == "outside_schedule"
    assert precheck(camp(ends_at=NOW + 1, hours="We 12:00-12:30"), ctx(), FACTS, none) is None
    # hours in the store's zone: noon in Rome is 06:00 in New York
    assert precheck(camp(hours="We 12:00-12:30"), ctx(store_timezone="America/New_York"), FACTS, none) == \
        "outside_hours"
    assert precheck(camp(hours="Mo-Fr 08:00-11:00", audience={"countries": ["FR"]}), ctx(), FACTS, none) == \
        "outside_hours"
    assert precheck(camp(audience={"countries": ["FR"]}, limits={"quiet_hours": "11:00-13:00"}), ctx(), FACTS,
                    none) == "not_in_audience"
    # quiet hours in the customer's zone
    assert precheck(camp(limits={"quiet_hours": "11:00-13:00"}), ctx(), FACTS, none) == "quiet_hours"
    assert precheck(camp(limits={"quiet_hours": "11:00-13:00"}), ctx(customer_timezone="Asia/Tokyo"), FACTS,
                    none) is None


def test_caps_cooldown_and_budget():
    c = camp(limits={"per_customer_per_day": 1, "per_customer_per_week": 2, "per_customer_total": 3,
                     "store_cooldown_s": 3600, "sends_per_day": 10, "sends_total": 100})
    today = NOW - 3600
    assert precheck(c, ctx(), FACTS, CampaignCounters(recent={"c": (today,)})) == "cap_reached"
    assert precheck(c, ctx(), FACTS, CampaignCounters(recent={"other": (today,)})) is None
    assert precheck(c, ctx(), FACTS, CampaignCounters(recent={"c": (NOW - DAY, NOW - 2 * DAY)})) == "cap_reached"
    assert precheck(c, ctx(), FACTS, CampaignCounters(recent={"c": (NOW - DAY, NOW - 8 * DAY)})) is None
    assert precheck(c, ctx(), FACTS, CampaignCounters(totals={"c": 3})) == "cap_reached"
    assert precheck(c, ctx(), FACTS, CampaignCounters(last_at_store={"c": NOW - 600})) == "cooldown"
    assert precheck(c, ctx(), FACTS, CampaignCounters(last_at_store={"c": NOW - 3600})) is None
    assert precheck(c, ctx(), FACTS, CampaignCounters(spent_today={"c": 10})) == "budget_spent"
    assert precheck(c, ctx(), FACTS, CampaignCounters(spent_total={"c": 100})) == "budget_spent"
    assert precheck(c, ctx(), FACTS, CampaignCounters(spent_today={"c": 9}, spent_total={"c": 99})) is None


def test_the_week_is_the_last_seven_local_days():
    assert week_start_at(NOW, "Europe/Rome") == datetime(2026, 5, 28, tzinfo=ROME).timestamp()
    # across the spring DST change (29 March 2026 in Rome): still local midnights
    assert week_start_at(at(1, 12) - 60 * DAY, "Europe/Rome") == datetime(2026, 3, 27, tzinfo=ROME).timestamp()


def test_the_pool_and_discover_mode():
    assert offer_allowed(OfferPool(), "o-1", ("mug",), FACTS, NOW)
    assert not offer_allowed(OfferPool(offer_ids=["o-2"]), "o-1", (), FACTS, NOW)
    assert not offer_allowed(OfferPool(mode="discover", discover_days=30), "o-1", ("mug",), FACTS, NOW)
    assert offer_allowed(OfferPool(mode="discover", discover_days=30), "o-1", ("tea",), FACTS, NOW)  # 40 days ago
    assert not offer_allowed(OfferPool(mode="discover", discover_days=45), "o-1", ("tea",), FACTS, NOW)


def test_the_holdout_is_stable_per_customer_and_different_per_campaign():
    a, b = camp("spring", limits={"holdout_percent": 20}), camp("summer", limits={"holdout_percent": 20})
    ids = [f"cu-{n}" for n in range(5000)]
    held_a = {i for i in ids if campaign_holdout(i, a)}
    held_b = {i for i in ids if campaign_holdout(i, b)}
    assert 900 < len(held_a) < 1100 and 900 < len(held_b) < 1100
    assert 120 < len(held_a & held_b) < 280  # independent groups: about 4 %, not 20 %
    salted = camp("autumn", limits={"holdout_percent": 20, "holdout_salt": "spring"})
    assert {i for i in ids if campaign_holdout(i, salted)} == held_a  # a shared salt shares the group
    assert not any(campaign_holdout(i, camp(limits={"holdout_percent": 0})) for i in ids)
    assert all(campaign_holdout(i, camp(limits={"holdout_percent": 100})) for i in ids)


def test_the_default_campaign_is_the_settings_of_before():
    d = default_campaign(["enter", "dwell"], 3, 21_600, 10.0, 900)
    assert (d.campaign_id, d.status, d.spec.trigger.on, d.spec.message) == ("default", "active", ["dwell", "enter"],
                                                                            None)
    assert (d.spec.limits.per_customer_per_day, d.spec.limits.store_cooldown_s, d.spec.limits.ttl_s) == (3, 21_600,
                                                                                                         900)
    ids = [f"hc-{n}" for n in range(2000)]
    assert [campaign_holdout(i, d) for i in ids] == [in_holdout(i, 10.0) for i in ids]


@pytest.mark.parametrize("body, needle", [
    ({"starts_at": NOW, "ends_at": NOW}, "ends_at must be after starts_at"),
    ({"hours": "every day"}, "opening_hours"),
    ({"timezone": "Mars/Olympus"}, "IANA"),
    ({"name": "a\x00b"}, "control"),
    ({"limits": {"ttl_s": 5}}, "ttl_s"),
    ({"trigger": {"on": []}}, "trigger.on"),
])
def test_bad_fields_say_what_is_wrong(body, needle):
    with pytest.raises(ValidationError) as e:
        CampaignIn.model_validate({"name": "n", **body})
    assert needle in str(e.value)
