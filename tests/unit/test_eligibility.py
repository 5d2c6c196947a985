"""Offer eligibility at a store, rule by rule, then all together.

Each rule is shown failing alone on an otherwise eligible offer (and not failing when its
condition is absent); hypothesis checks the time window, channels and stock thresholds for any
input; every combination of failing rules reports the first of them in order.
"""
from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from vicino.services.kernel.contracts.interactions import CHANNELS
from vicino.services.recommender.domain.campaign_rules import NO_RULES, CampaignRules
from vicino.services.recommender.domain.eligibility import (REASONS, STORE_CHECKS, Situation, StoreView, first_failure,
                                                     ineligibility, sort_out)
from vicino.services.recommender.domain.offers import Offer

ROME = ZoneInfo("Europe/Rome")
NOW = datetime(2024, 6, 3, 10, 0, tzinfo=ROME).timestamp()  # a Monday, 10:00 in Rome
DAY = 86_400.0
STORE = StoreView("s1", brand="Acme", opening_hours="Mo-Sa 09:00-20:00", timezone="Europe/Rome")
PLENTY = {"sku-1": 100, "sku-2": 100}


def offer(**kw) -> Offer:
    base = dict(offer_id="o1", title="Mug", item_ids=["sku-1", "sku-2"], category="MUG", price=10.0,
                promo_price=8.0, currency="EUR", valid_from=NOW - DAY, valid_to=NOW + DAY)
    return Offer(**{**base, **kw})


def reason(o: Offer | None = None, *, store: StoreView | None = STORE, stock=None, rules: CampaignRules = NO_RULES,
           channel: str = "app", now: float = NOW) -> str | None:
    return ineligibility(o or offer(), store, PLENTY if stock is None else stock, rules, channel, now)


def test_an_ordinary_offer_is_eligible():
    assert reason() is None


# the offer's own terms ------------------------------------------------------------------------------

def test_not_started_and_expired():
    assert reason(now=NOW - DAY - 1) == "not_started"
    assert reason(now=NOW - DAY) is None          # valid_from is inclusive
    assert reason(now=NOW + DAY - 0.001) is None
    assert reason(now=NOW + DAY) == "expired"     # valid_to is exclusive


@given(now=st.floats(NOW - 3 * DAY, NOW + 3 * DAY))
def test_time_window_for_any_instant(now):
    got = reason(now=now)
    if now < NOW - DAY:
        assert got == "not_started"
    elif now >= NOW + DAY:
        assert got == "expired"
    else:
        assert got is None


@given(allowed=st.none() | st.lists(st.sampled_from(CHANNELS), min_size=1, unique=True),
       channel=st.sampled_from(CHANNELS))
def test_channel(allowed, channel):
    got = reason(offer(channels=allowed), channel=channel)
    assert got == (None if allowed is None or channel in allowed else "channel")


def test_store_scope():
    assert reason(offer(store_ids=["s2", "s3"])) == "store_scope"
    assert reason(offer(store_ids=["s2", "s1"])) is None
    assert reason(offer(store_ids=None)) is None


def test_brand_is_compared_without_case():
    assert reason(offer(brands=["Other"])) == "brand"
    assert reason(offer(brands=["Other", "ACME"])) is None
    assert reason(offer(brands=["Acme"]), store=StoreView("s1", brand="")) == "brand"


def test_min_stock_counts_every_item_and_missing_items_as_zero():
    o = offer(min_stock=5)
    assert reason(o, stock={"sku-1": 5, "sku-2": 5}) is None
    assert reason(o, stock={"sku-1": 5, "sku-2": 4}) == "min_stock"
    assert reason(o, stock={"sku-1": 50}) == "min_stock"   # sku-2 unknown at this store: none held
    assert reason(offer(), stock={}) is None                # no min_stock: stock does not matter


@given(min_stock=st.integers(1, 50), q1=st.integers(0, 60), q2=st.integers(0, 60))
def test_min_stock_for_any_quantities(min_stock, q1, q2):
    got = reason(offer(min_stock=min_stock), stock={"sku-1": q1, "sku-2": q2})
    assert got == ("min_stock" if min(q1, q2) < min_stock else None)


# campaign switches ----------------------------------------------------------------------------------

def test_paused_store():
    assert reason(rules=CampaignRules(paused_store_ids=["s1"])) == "paused_store"
    assert reason(rules=CampaignRules(paused_store_ids=["s2"])) is None


def test_paused_brand_is_compared_without_case():
    assert reason(rules=CampaignRules(paused_brands=["acme"])) == "paused_brand"
    assert reason(rules=CampaignRules(paused_brands=["Other"])) is None
    # a store without a brand is never caught by a brand pause
    assert reason(store=StoreView("s1"), rules=CampaignRules(paused_brands=["acme"])) is None


def test_store_closed_only_when_the_rule_is_on():
    on = CampaignRules(suppress_closed_stores=True)
    sunday = datetime(2024, 6, 2, 10, 0, tzinfo=ROME).timestamp()
    o = offer(valid_from=sunday - DAY, valid_to=sunday + 7 * DAY)
    assert reason(o, now=sunday, rules=on) == "store_closed"
    assert reason(o, now=sunday) is None
    assert reason(o, now=NOW, rules=on) is None
    assert reason(o, now=NOW, rules=on, store=StoreView("s1", opening_hours=None)) is None  # hours unknown


def test_store_closed_uses_the_store_time_zone():
    on = CampaignRules(suppress_closed_stores=True)
    hours = "Mo-Su 09:00-18:00"
    noon_in_rome = datetime(2024, 6, 3, 12, 0, tzinfo=ROME).timestamp()  # 19:00 in Tokyo
    assert reason(store=StoreView("s1", opening_hours=hours, timezone="Europe/Rome"), rules=on,
                  now=noon_in_rome) is None
    assert reason(store=StoreView("s1", opening_hours=hours, timezone="Asia/Tokyo"), rules=on,
                  now=noon_in_rome) == "store_closed"


@pytest.mark.parametrize("fulfilment,expected", [("click_and_collect", "low_stock"), ("reservation", "low_stock"),
                                                 ("in_store", None), ("online", None)])
def test_low_stock_only_for_fulfilment_that_sets_goods_aside(fulfilment, expected):
    on = CampaignRules(suppress_low_stock=True, low_stock_threshold=3)
    assert reason(offer(fulfilment=fulfilment), stock={"sku-1": 10, "sku-2": 2}, rules=on) == expected


@given(threshold=st.integers(1, 20), q=st.integers(0, 25), on=st.booleans())
def test_low_stock_threshold(threshold, q, on):
    rules = CampaignRules(suppress_low_stock=on, low_stock_threshold=threshold)
    got = reason(offer(fulfilment="click_and_collect"), stock={"sku-1": q, "sku-2": 99}, rules=rules)
    assert got == ("low_stock" if on and q < threshold else None)


def test_without_a_store_only_time_and_channel_apply():
    rules = CampaignRules(paused_store_ids=["s1"], paused_brands=["acme"], suppress_closed_stores=True,
                          suppress_low_stock=True)
    o = offer(store_ids=["s9"], brands=["Other"], min_stock=5, fulfilment="reservation", channels=["email"])
    assert reason(o, store=None, stock={}, rules=rules, channel="email") is None
    assert reason(o, store=None, stock={}, rules=rules, channel="web") == "channel"


# all together ---------------------------------------------------------------------------------------

def test_the_first_failing_rule_in_order_is_reported():
    """Every combination of failing rules (exhaustive: 2 x 2^9, a random sample misses pairs)."""
    others = [r for r in REASONS if r not in ("not_started", "expired")]
    for time_state in ("not_started", "expired", None):
        for n in range(len(others) + 1):
            for combo in itertools.combinations(others, n):
                fail = set(combo) | ({time_state} if time_state else set())
                assert _judge(fail) == next((r for r in REASONS if r in fail), None), fail


def _judge(fail: set[str]) -> str | None:
    """The verdict on an offer built to fail exactly the rules in `fail`."""
    held = 2 if "min_stock" in fail else 10
    o = offer(channels=["web"], store_ids=["s9"] if "store_scope" in fail else ["s1"],
              brands=["Other"] if "brand" in fail else ["ACME"], min_stock=5, fulfilment="click_and_collect")
    rules = CampaignRules(paused_store_ids=["s1"] if "paused_store" in fail else [],
                          paused_brands=["acme"] if "paused_brand" in fail else [],
                          suppress_closed_stores=True, suppress_low_stock=True,
                          low_stock_threshold=held + 1 if "low_stock" in fail else 1)
    store = StoreView("s1", brand="Acme", opening_hours="off" if "store_closed" in fail else "24/7")
    now = NOW - 2 * DAY if "not_started" in fail else NOW + 2 * DAY if "expired" in fail else NOW
    return ineligibility(o, store, {"sku-1": held, "sku-2": held}, rules, "store" if "channel" in fail else "web", now)


def test_checks_compose_with_the_caller_own():
    redeemed = {"o1"}

    def already_redeemed(o: Offer, s: Situation) -> str | None:
        return "redeemed" if o.offer_id in redeemed else None

    s = Situation(STORE, PLENTY, NO_RULES, "app", NOW)
    assert first_failure(offer(), s) is None
    assert first_failure(offer(), s, STORE_CHECKS + (already_redeemed,)) == "redeemed"
    assert first_failure(offer(channels=["web"]), s, STORE_CHECKS + (already_redeemed,)) == "channel"


def test_sort_out_ranks_by_priority_then_canonical_price():
    offers = [offer(offer_id="cheap", price=5.0, promo_price=None),
              offer(offer_id="promo", price=10.0, promo_price=4.0),
              offer(offer_id="urgent", price=50.0, promo_price=None, priority=5),
              offer(offer_id="gone", valid_to=NOW - 1, valid_from=NOW - DAY),
              offer(offer_id="elsewhere", store_ids=["s2"])]
    v = sort_out(offers, Situation(STORE, PLENTY, NO_RULES, "app", NOW))
    assert [o.offer_id for o in v.eligible] == ["urgent", "promo", "cheap"]
    assert [(o.offer_id, r) for o, r in v.excluded] == [("elsewhere", "store_scope"), ("gone", "expired")]


# the offer itself -----------------------------------------------------------------------------------

@given(channel=st.sampled_from(CHANNELS))
def test_one_canonical_price_whatever_the_channel(channel):
    o = offer(price=12.5, promo_price=9.99)
    assert o.canonical_price == 9.99
    assert o.to_public()["canonical_price"] == 9.99
    assert offer(promo_price=None).canonical_price == 10.0


@pytest.mark.parametrize("bad,field", [
    (dict(price=0), "price"), (dict(price=-1), "price"), (dict(promo_price=10.01), "promo_price"),
    (dict(valid_to=NOW - DAY), "valid_to"), (dict(valid_from="2024-06-03T10:00:00"), "valid_from"),
    (dict(channels=["fax"]), "channels"), (dict(channels=[]), "channels"), (dict(store_ids=[]), "store_ids"),
    (dict(item_ids=[]), "item_ids"), (dict(item_ids=["has space"]), "item_ids"), (dict(currency="euro"), "currency"),
    (dict(fulfilment="drone"), "fulfilment"), (dict(min_stock=0), "min_stock"), (dict(colour="red"), "colour"),
])
def test_offer_validation_names_the_field(bad, field):
    with pytest.raises(ValidationError) as e:
        offer(**bad)
    assert field in {str(err["loc"][0]) for err in e.value.errors()}


def test_repeated_ids_are_kept_once_in_order():
    o = offer(item_ids=["b", "a", "b"], channels=["web", "app", "web"])
    assert o.item_ids == ["b", "a"] and o.channels == ["web", "app"]


def test_store_view_from_a_published_feature():
    feature = {"type": "Feature", "id": "s7", "geometry": {"type": "Point", "coordinates": [9.0, 45.0]},
               "properties": {"name": "x", "brand": "Esso", "opening_hours": "24/7", "timezone": "Europe/London",
                              "enabled": True, "radius_m": 50.0}}
    assert StoreView.from_feature(feature) == StoreView("s7", "Esso", "24/7", "Europe/London")
